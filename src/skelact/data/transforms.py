"""Clip protocols, augmentations and streams: pure numpy on one clip, randomness only through ``rng``.

Every function takes and returns a clip of shape (M, T, V, C) (persons, frames, joints, coordinates).
A *protocol* turns a stored clip of any length into ``window`` frames (DATA.md):

* ``"ntu"`` (CTR-GCN "w64"): keep the valid frames; train: random crop of a fraction U(0.5, 1) of them
  (at least ``window`` frames when available), test: centre crop of 95 %; resize to ``window`` frames
  by linear interpolation. Train-time augmentation: Euler rotation U(-0.3, 0.3) rad about x, y, z and
  FR-Head's symmetric bone-length scaling U(0.8, 1.2).
* ``"ucla"`` (CTR-GCN / FR-Head NW-UCLA): one person; subtract joint 2 (index 1) of frame 0; train:
  rotate by random integer degrees in [-60, 60] about y then x and scale by one factor U(0.5, 1.5) per
  clip; min-max normalise each axis to [-1, 1]; train: ``window`` sorted frame indices drawn without
  replacement from the frame list repeated 100 times, test: ``linspace(0, T - 1, window)`` truncated
  to integers (as the reference feeder's ``astype(int)``).
  Note: the per-axis normalisation undoes any scaling, so the scale factor (kept for parity with the
  reference recipe) has no effect on the output.
* ``"none"``: crop (train: random start, test: centre) or zero-pad at the end to ``window`` frames;
  no augmentation unless asked for.

Streams (``j``, ``b``, ``jm``, ``bm``) are computed after the protocol, see :func:`to_stream`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np

from ..errors import SkelactError
from ..layouts import Layout

STREAMS = ("j", "b", "jm", "bm")


# ----------------------------------------------------------------------------------------- temporal
def valid_frames(x: np.ndarray) -> np.ndarray:
    """Boolean mask (T,) of frames in which any joint of any person is non-zero. x: (M, T, V, C)."""
    return x.any(axis=(0, 2, 3))


def resize_time(x: np.ndarray, length: int) -> np.ndarray:
    """Linear interpolation along time: (M, T, V, C) -> (M, length, V, C).

    Sample positions follow ``torch.nn.functional.interpolate(..., mode="linear",
    align_corners=False)``: output frame i reads input position ``(i + 0.5) * T / length - 0.5``,
    clamped to [0, T - 1]. A 1-frame clip is repeated.
    """
    t = x.shape[1]
    if t == length:
        return x
    src = np.clip((np.arange(length) + 0.5) * (t / length) - 0.5, 0.0, t - 1)
    i0 = src.astype(np.int64)  # floor, src >= 0
    i1 = np.minimum(i0 + 1, t - 1)
    w = (src - i0).astype(x.dtype)[None, :, None, None]
    a = x[:, i0]
    return a + (x[:, i1] - a) * w


def crop_resize(x: np.ndarray, window: int, train: bool, rng: np.random.Generator | None,
                p_interval: tuple[float, float] = (0.5, 1.0), test_p: float = 0.95) -> np.ndarray:
    """NTU temporal protocol: (M, T, V, C) -> (M, window, V, C).

    Train: crop ``clip(floor(valid * p), min(window, valid), valid)`` frames, p ~ U(p_interval), at a
    random start; test: drop ``int((1 - test_p) * valid / 2)`` frames at each end. Then resize.
    """
    mask = valid_frames(x)
    if mask.any() and not mask.all():
        x = x[:, mask]
    valid = x.shape[1]
    if train:
        p = rng.uniform(*p_interval)
        length = int(min(max(np.floor(valid * p), min(window, valid), 1), valid))
        start = int(rng.integers(0, valid - length + 1))
    else:
        start = int((1.0 - test_p) * valid / 2)
        length = valid - 2 * start
    return resize_time(x[:, start:start + length], window)


def pad_or_crop(x: np.ndarray, window: int, train: bool, rng: np.random.Generator | None) -> np.ndarray:
    """(M, T, V, C) -> (M, window, V, C): crop (train: random start, test: centre) or zero-pad at the end."""
    t = x.shape[1]
    if t > window:
        start = int(rng.integers(0, t - window + 1)) if train else (t - window) // 2
        return x[:, start:start + window]
    if t < window:
        out = np.zeros((x.shape[0], window, *x.shape[2:]), dtype=x.dtype)
        out[:, :t] = x
        return out
    return x


def sample_frame_indices(t: int, window: int, train: bool, rng: np.random.Generator | None,
                         repeats: int = 100) -> np.ndarray:
    """NW-UCLA frame indices (window,) into a clip of t frames.

    Train: ``window`` positions drawn without replacement from ``list(range(t)) * repeats``, sorted
    (clips shorter than ``window`` repeat frames); test: ``linspace(0, t - 1, window)`` truncated to integers,
    as the reference feeder does (not rounded: that would pick other frames for most clip lengths).
    """
    if train:
        if window > t * repeats:
            raise SkelactError(f"window {window} exceeds {repeats} repeats of a {t}-frame clip")
        return np.sort(rng.choice(t * repeats, window, replace=False) % t)
    return _linspace_indices(t, window)


@lru_cache(maxsize=4096)
def _linspace_indices(t: int, window: int) -> np.ndarray:
    idx = np.linspace(0, t - 1, window).astype(np.int64)  # truncation, as the reference
    idx.flags.writeable = False
    return idx


# ------------------------------------------------------------------------------------------ spatial
def rotation_matrix(ax: float, ay: float, az: float = 0.0) -> np.ndarray:
    """R = Rz(az) @ Ry(ay) @ Rx(ax) (radians), float32 (3, 3): rotate about x first, then y, then z."""
    cx, sx, cy, sy = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay)
    cz, sz = math.cos(az), math.sin(az)
    return np.array([[cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx],
                     [sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx],
                     [-sy, cy * sx, cy * cx]], dtype=np.float32)


def rotate(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Apply a rotation (3, 3) to every point of (M, T, V, 3): x' = R x (one flat matrix product)."""
    return (x.reshape(-1, 3) @ r.T.astype(x.dtype)).reshape(x.shape)


def random_rotate(x: np.ndarray, rng: np.random.Generator, theta: float) -> np.ndarray:
    """Rotate (M, T, V, 3) by Euler angles U(-theta, theta) rad about x, y, z (one draw per clip)."""
    return rotate(x, rotation_matrix(*rng.uniform(-theta, theta, 3)))


def joint_matmul(b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Mix joints with b (V, V): (M, T, V, C) -> (M, T, V, C), ``x'[.., v, :] = sum_u b[v, u] x[.., u, :]``."""
    m, t, v, c = x.shape
    y = b.astype(x.dtype) @ x.transpose(2, 0, 1, 3).reshape(v, m * t * c)
    return y.reshape(v, m, t, c).transpose(1, 2, 0, 3)


@lru_cache(maxsize=None)
def tree_matrices(parents: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(A, D), float32 (V, V), of the bone tree given by ``parents`` (root = its own parent).

    ``D = I - P`` turns joints into bones (``bones = D @ joints``, the root's bone is 0);
    ``A[v, u] = 1`` when bone u lies on the path from joint v to the root, so
    ``joints = joints[root] + A @ bones``.
    """
    v = len(parents)
    d = np.eye(v, dtype=np.float32)
    d[np.arange(v), parents] -= 1.0
    a = np.zeros((v, v), dtype=np.float32)
    for joint in range(v):
        j = joint
        while parents[j] != j:
            a[joint, j] = 1.0
            j = parents[j]
    return a, d


def bone_factors(layout: Layout, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """One factor U(low, high) per bone (V,), float32; a bone and its left/right mirror share it.

    Bone v joins joint v to ``layout.parents[v]``; the centre bone's factor is irrelevant (zero bone).
    """
    s = rng.uniform(low, high, layout.num_joints).astype(np.float32)
    if layout.left_right:
        left, right = np.asarray(layout.left_right).T
        s[right] = s[left]
    return s


def scale_bones(x: np.ndarray, layout: Layout, factors: np.ndarray) -> np.ndarray:
    """Scale bone v of (M, T, V, C) by ``factors[v]``, rebuilding joints from the centre outwards.

    The centre stays put and every joint moves with its scaled ancestor bones:
    ``x' = x + A @ ((factors - 1) * D @ x) = (I + A diag(factors - 1) D) @ x`` over the joint axis,
    with A, D from :func:`tree_matrices`.
    """
    a, d = tree_matrices(layout.parents)
    b = (a * (np.asarray(factors, np.float32) - 1.0)) @ d
    b[np.diag_indices_from(b)] += 1.0
    return joint_matmul(b, x)


def random_bone_scale(x: np.ndarray, layout: Layout, rng: np.random.Generator,
                      low: float = 0.8, high: float = 1.2) -> np.ndarray:
    """FR-Head's symmetric bone-length scaling of (M, T, V, C) with factors U(low, high)."""
    return scale_bones(x, layout, bone_factors(layout, rng, low, high))


def _minmax_affine(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift), each (C,), so that ``pts * scale + shift`` maps every row of pts (C, N) onto
    [-1, 1]; a constant row maps to 0 (no division by zero)."""
    lo = pts.min(axis=1)
    span = pts.max(axis=1) - lo
    ok = span > 0
    scale = np.zeros_like(span)
    np.divide(2.0, span, out=scale, where=ok)
    return scale, -lo * scale - ok


def minmax_normalise(x: np.ndarray) -> np.ndarray:
    """Map each coordinate axis of (M, T, V, C) to [-1, 1] over the whole clip; a constant axis gives 0."""
    scale, shift = _minmax_affine(np.ascontiguousarray(x.reshape(-1, x.shape[-1]).T))
    return x * scale + shift


# ---------------------------------------------------------------------------------------- protocols
def _augment_3d(x, layout, rng, rotate: float = 0.0, bone_scale=None):
    if bone_scale:
        x = random_bone_scale(x, layout, rng, *bone_scale)
    if rotate:
        x = random_rotate(x, rng, rotate)
    return x


def ntu_clip(x: np.ndarray, *, window: int, train: bool, rng: np.random.Generator | None,
             layout: Layout, rotate: float = 0.0, bone_scale=None) -> np.ndarray:
    """NTU "w64" protocol: (M, T, V, C) -> (M, window, V, C); augmentation only when ``train``."""
    x = crop_resize(x, window, train, rng)
    return _augment_3d(x, layout, rng, rotate, bone_scale) if train else x


def plain_clip(x: np.ndarray, *, window: int, train: bool, rng: np.random.Generator | None,
               layout: Layout, rotate: float = 0.0, bone_scale=None) -> np.ndarray:
    """No resampling: crop or zero-pad (M, T, V, C) to (M, window, V, C); optional augmentation."""
    x = pad_or_crop(x, window, train, rng)
    return _augment_3d(x, layout, rng, rotate, bone_scale) if train else x


def ucla_clip(x: np.ndarray, *, window: int, train: bool, rng: np.random.Generator | None,
              layout: Layout, rotate_deg: int = 0, scale=None, origin: int = 1,
              repeats: int = 100) -> np.ndarray:
    """NW-UCLA protocol: (M, T, V, 3) -> (1, window, V, 3), person 0 only, values in [-1, 1].

    Works on the points as a contiguous (3, T * V) array (fast per-axis min/max); normalises only the
    sampled frames. (Centring and scaling do not change the normalised output; kept for parity.)
    """
    t, v, c = x.shape[1:]
    k = layout.coords  # centre and normalise the coordinates only; a 2-D layout's scores stay as they are
    pts = x[0].reshape(t * v, c).T  # (C, T * V) view
    if train and (rotate_deg or scale):
        r = np.eye(3, dtype=np.float32)
        if rotate_deg:
            ax, ay = rng.integers(-int(rotate_deg), int(rotate_deg) + 1, 2).tolist()
            # the reference rotates about y first, then about x: p' = s · Rx(ax) · Ry(ay) · p
            r = rotation_matrix(math.radians(ax), 0.0) @ rotation_matrix(0.0, math.radians(ay))
        if scale:
            r = r * np.float32(rng.uniform(*scale))
        pts = r.astype(x.dtype) @ pts  # contiguous (3, T * V)
    else:
        pts = pts.copy()  # contiguous, writable (the stored clip may be a read-only memmap view)
    pts[:k] -= pts[:k, origin:origin + 1]  # joint `origin` of frame 0 (rotated with the clip)
    mul, add = _minmax_affine(pts[:k])
    out = pts.reshape(c, t, v)[:, sample_frame_indices(t, window, train, rng, repeats)]  # (C, W, V)
    out[:k] *= mul[:, None, None]
    out[:k] += add[:, None, None]
    return out.transpose(1, 2, 0)[None]


@dataclass(frozen=True)
class Protocol:
    """A clip protocol: ``fn(x, window=, train=, rng=, layout=, **augment)`` -> (M', window, V, C).

    ``augment`` holds the default train-time augmentation; ``single_person`` protocols return M' = 1.
    """
    name: str
    fn: Callable[..., np.ndarray]
    augment: dict = field(default_factory=dict)
    augment_keys: tuple[str, ...] = ()
    single_person: bool = False


PROTOCOLS: dict[str, Protocol] = {
    "ntu": Protocol("ntu", ntu_clip, {"rotate": 0.3, "bone_scale": (0.8, 1.2)},
                    ("rotate", "bone_scale")),
    "ucla": Protocol("ucla", ucla_clip, {"rotate_deg": 60, "scale": (0.5, 1.5)},
                     ("rotate_deg", "scale"), single_person=True),
    "none": Protocol("none", plain_clip, {}, ("rotate", "bone_scale")),
}


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except (KeyError, TypeError):
        raise SkelactError(f"protocol: unknown {name!r}; known: {', '.join(PROTOCOLS)}") from None


def resolve_augment(protocol: Protocol, augment: dict | bool | None) -> dict:
    """Train-time augmentation parameters: None/True = protocol defaults, False = none, a dict
    overrides the defaults key by key (a value of None or 0 turns that augmentation off)."""
    if augment is None or augment is True:
        return dict(protocol.augment)
    if augment is False:
        return {}
    if not isinstance(augment, dict):
        raise SkelactError(f"augment: expected a mapping, true/false or null, not {augment!r}")
    unknown = sorted(set(augment) - set(protocol.augment_keys))
    if unknown:
        raise SkelactError(f"augment: unknown key(s) {', '.join(unknown)} for protocol "
                           f"{protocol.name!r}; known: {', '.join(protocol.augment_keys) or 'none'}")
    out = {**protocol.augment, **augment}
    for key in ("bone_scale", "scale"):
        if out.get(key) is not None and (not isinstance(out[key], (list, tuple)) or len(out[key]) != 2):
            raise SkelactError(f"augment.{key}: expected [low, high], not {out[key]!r}")
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in out.items() if v}


# ------------------------------------------------------------------------------------------ streams
def to_stream(x: np.ndarray, stream: str, parents: tuple[int, ...], coords: int | None = None) -> np.ndarray:
    """Stream of a clip (M, T, V, C): ``j`` joints, ``b`` bones ``x[v] - x[parents[v]]`` (centre bone 0),
    ``jm`` joint motion ``x[t + 1] - x[t]`` (last frame 0), ``bm`` bone motion.

    Only the first ``coords`` channels (default: all) are coordinates. The rest, the confidence scores of
    2-D layouts, are averaged instead of subtracted (a bone's score is the mean of its joints' scores, a
    motion's the mean over its two frames, as pyskl does): a difference of scores means nothing.
    """
    if stream not in STREAMS:
        raise SkelactError(f"stream: unknown {stream!r}; known: {', '.join(STREAMS)}")
    c = x.shape[-1] if coords is None else coords
    scores = c < x.shape[-1]
    if stream in ("b", "bm"):
        other = np.take(x, _index_array(tuple(parents)), axis=2)
        bones = x - other
        if scores:
            bones[..., c:] = (x[..., c:] + other[..., c:]) / 2
        x = bones
    if stream in ("jm", "bm"):
        motion = np.zeros_like(x)
        np.subtract(x[:, 1:], x[:, :-1], out=motion[:, :-1])
        if scores:
            motion[:, :-1, :, c:] = (x[:, 1:, :, c:] + x[:, :-1, :, c:]) / 2
        x = motion
    return x


@lru_cache(maxsize=None)
def _index_array(parents: tuple[int, ...]) -> np.ndarray:
    out = np.asarray(parents, dtype=np.intp)
    out.flags.writeable = False
    return out
