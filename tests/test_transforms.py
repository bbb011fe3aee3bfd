import numpy as np
import pytest
import torch

from skelact.errors import SkelactError
from skelact.layouts import NTU25, UCLA20
from skelact.data import transforms as tf


def rand_clip(m=2, t=30, v=25, c=3, seed=0):
    return np.random.default_rng(seed).normal(size=(m, t, v, c)).astype(np.float32)


def slow_resize(x, length):
    """Linear interpolation, one output frame at a time (align_corners=False convention)."""
    m, t, v, c = x.shape
    out = np.zeros((m, length, v, c), dtype=np.float64)
    for i in range(length):
        pos = (i + 0.5) * t / length - 0.5
        pos = min(max(pos, 0.0), t - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, t - 1)
        w = pos - lo
        out[:, i] = (1 - w) * x[:, lo] + w * x[:, hi]
    return out


@pytest.mark.parametrize("t,length", [(1, 64), (3, 64), (17, 64), (64, 64), (100, 64), (300, 52), (2, 3)])
def test_resize_time_matches_slow_loop_and_torch(t, length):
    x = rand_clip(t=t, seed=t)
    got = tf.resize_time(x, length)
    assert got.shape == (2, length, 25, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, slow_resize(x, length), rtol=1e-5, atol=1e-5)
    flat = torch.from_numpy(x.transpose(0, 2, 3, 1).reshape(1, -1, t))
    ref = torch.nn.functional.interpolate(flat, size=length, mode="linear", align_corners=False)
    ref = ref.reshape(2, 25, 3, length).permute(0, 3, 1, 2).numpy()
    np.testing.assert_allclose(got, ref, atol=2e-4)  # torch computes positions in float32


def slow_crop_resize(x, window, train, rng):
    """The NTU protocol written out step by step (same random draws, same order)."""
    keep = [t for t in range(x.shape[1]) if np.any(x[:, t] != 0)] or list(range(x.shape[1]))
    x = x[:, keep]
    valid = len(keep)
    if train:
        p = rng.uniform(0.5, 1.0)
        length = int(np.floor(valid * p))
        length = max(length, min(window, valid), 1)
        length = min(length, valid)
        start = int(rng.integers(0, valid - length + 1))
    else:
        start = int(0.05 * valid / 2)
        length = valid - 2 * start
    return slow_resize(x[:, start:start + length], window)


@pytest.mark.parametrize("t", [1, 3, 40, 64, 65, 200])
@pytest.mark.parametrize("train", [True, False])
def test_crop_resize_matches_slow(t, train):
    x = rand_clip(t=t, seed=t)
    x[1, t // 2:] = 0  # person 2 leaves half way: frames stay valid
    got = tf.crop_resize(x, 64, train, np.random.default_rng(7))
    ref = slow_crop_resize(x, 64, train, np.random.default_rng(7))
    assert got.shape == (2, 64, 25, 3)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_crop_resize_drops_invalid_frames():
    x = rand_clip(t=50)
    padded = np.concatenate([x, np.zeros((2, 30, 25, 3), np.float32)], axis=1)
    padded[:, 10] = 0  # an empty frame in the middle is not valid either
    np.testing.assert_allclose(tf.crop_resize(padded, 64, False, None),
                               tf.crop_resize(np.delete(x, 10, axis=1), 64, False, None))
    # an all-zero clip has no valid frames: it stays zeros, no crash
    assert not tf.crop_resize(np.zeros((2, 5, 25, 3), np.float32), 64, True, np.random.default_rng(0)).any()


def test_train_crop_keeps_at_least_window_frames():
    t = 100
    x = np.broadcast_to(np.arange(1, t + 1, dtype=np.float32)[None, :, None, None], (1, t, 25, 3)).copy()
    for seed in range(50):
        out = tf.crop_resize(x, 64, True, np.random.default_rng(seed))[0, :, 0, 0]
        assert out[-1] - out[0] >= 64 - 1 - 1e-4  # the crop spans at least 64 source frames
        assert 1 <= out[0] and out[-1] <= t


def test_rotation_preserves_lengths_and_distances():
    rng = np.random.default_rng(1)
    x = rand_clip(t=10)
    y = tf.random_rotate(x, rng, 0.3)
    assert y.dtype == np.float32 and not np.allclose(x, y)
    bone = lambda a: np.linalg.norm(a - a[:, :, list(NTU25.parents)], axis=-1)  # noqa: E731
    np.testing.assert_allclose(bone(y), bone(x), rtol=1e-4, atol=1e-5)
    dist = lambda a: np.linalg.norm(a[:, :, :, None] - a[:, :, None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(dist(y), dist(x), rtol=1e-4, atol=1e-5)
    r = tf.rotation_matrix(0.2, -0.1, 0.3)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-6)
    assert np.isclose(np.linalg.det(r), 1.0, atol=1e-6)
    # R = Rz Ry Rx, written out from the elementary rotations
    ax, ay, az = 0.2, -0.1, 0.3
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    np.testing.assert_allclose(r, rz @ ry @ rx, atol=1e-6)
    np.testing.assert_allclose(tf.rotation_matrix(0.7, 0, 0) @ [1, 0, 0], [1, 0, 0], atol=1e-7)


def slow_scale_bones(x, layout, s):
    """Rebuild the skeleton joint by joint, breadth first from the centre."""
    out = np.zeros_like(x, dtype=np.float64)
    out[:, :, layout.center] = x[:, :, layout.center]
    done, todo = {layout.center}, [layout.center]
    while todo:
        parent = todo.pop(0)
        for v in range(layout.num_joints):
            if v not in done and layout.parents[v] == parent:
                out[:, :, v] = out[:, :, parent] + s[v] * (x[:, :, v] - x[:, :, parent])
                done.add(v)
                todo.append(v)
    return out


@pytest.mark.parametrize("layout", [NTU25, UCLA20])
def test_bone_scaling(layout):
    x = rand_clip(t=7, v=layout.num_joints)
    s = tf.bone_factors(layout, np.random.default_rng(3), 0.8, 1.2)
    assert ((0.8 <= s) & (s <= 1.2)).all()
    for a, b in layout.left_right:
        assert s[a] == s[b]
    assert len(set(s.tolist())) == layout.num_joints - len(layout.left_right)  # otherwise independent
    y = tf.scale_bones(x, layout, s)
    np.testing.assert_allclose(y, slow_scale_bones(x, layout, s), rtol=1e-4, atol=1e-5)
    par = list(layout.parents)
    np.testing.assert_allclose(y - y[:, :, par], s[:, None] * (x - x[:, :, par]), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(y[:, :, layout.center], x[:, :, layout.center])
    # random version: the same draws give the same result
    z = tf.random_bone_scale(x, layout, np.random.default_rng(3), 0.8, 1.2)
    np.testing.assert_allclose(z, y)


def test_minmax_normalise_range_and_degenerate():
    x = rand_clip(m=1, t=20, v=20) * 5 + 3
    y = tf.minmax_normalise(x)
    np.testing.assert_allclose(y.min(axis=(0, 1, 2)), -1, atol=1e-6)
    np.testing.assert_allclose(y.max(axis=(0, 1, 2)), 1, atol=1e-6)
    flat = np.full((1, 4, 20, 3), 2.5, np.float32)
    flat[..., 0] = np.arange(4, dtype=np.float32)[None, :, None]  # only x varies
    z = tf.minmax_normalise(flat)
    assert np.isfinite(z).all() and (z[..., 1:] == 0).all() and z[..., 0].min() == -1


@pytest.mark.parametrize("t", [1, 3, 30, 201])
def test_ucla_frame_indices(t):
    rng = np.random.default_rng(t)
    idx = tf.sample_frame_indices(t, 52, True, rng)
    assert idx.shape == (52,) and (np.diff(idx) >= 0).all() and idx.min() >= 0 and idx.max() < t
    assert np.bincount(idx).max() <= 100
    if t >= 52 * 100:  # pragma: no cover - not exercised, documents the multiset semantics
        assert len(set(idx)) == 52
    test = tf.sample_frame_indices(t, 52, False, None)
    np.testing.assert_array_equal(test, [int(i * (t - 1) / 51) for i in range(52)])  # floor, as the reference


def test_ucla_clip_values():
    x = rand_clip(m=2, t=30, v=20)
    for train in (True, False):
        y = tf.ucla_clip(x, window=52, train=train, rng=np.random.default_rng(0), layout=UCLA20,
                         rotate_deg=60, scale=(0.5, 1.5))
        assert y.shape == (1, 52, 20, 3) and y.dtype == np.float32
        assert np.isfinite(y).all() and y.min() >= -1 - 1e-6 and y.max() <= 1 + 1e-6
    # test mode: centring then normalising, frames from linspace
    y = tf.ucla_clip(x, window=52, train=False, rng=None, layout=UCLA20)
    ref = tf.minmax_normalise(x[:1] - x[0, 0, 1])[:, [int(i * 29 / 51) for i in range(52)]]
    np.testing.assert_allclose(y, ref, atol=1e-6)
    # degenerate clip: all coordinates equal -> zeros, no NaN
    flat = np.full((1, 5, 20, 3), 0.7, np.float32)
    for train in (True, False):
        y = tf.ucla_clip(flat, window=52, train=train, rng=np.random.default_rng(0), layout=UCLA20,
                         rotate_deg=60, scale=(0.5, 1.5))
        assert np.isfinite(y).all() and not y.any()


def reference_ucla_train_clip(x, agx, agy, s, frames):
    """The published NW-UCLA train transform, step by step on (T*V, 3) rows (row-vector convention):
    centre on joint 2 of frame 0, rows @ (Ry · Rx · s) with the reference's matrices, per-axis min-max
    to [-1, 1], then the sampled frames."""
    import math
    t, v, _ = x.shape[1:]
    a, b = math.radians(agx), math.radians(agy)
    rx = np.array([[1, 0, 0], [0, math.cos(a), math.sin(a)], [0, -math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, -math.sin(b)], [0, 1, 0], [math.sin(b), 0, math.cos(b)]])
    rows = (x[0] - x[0, 0, 1]).reshape(-1, 3).astype(np.float64) @ (ry @ rx @ (s * np.eye(3)))
    rows = (rows - rows.min(0)) / (rows.max(0) - rows.min(0)) * 2 - 1
    return rows.reshape(t, v, 3)[frames][None]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ucla_train_transform_matches_the_reference(seed):
    x = rand_clip(m=1, t=40, v=20, seed=seed)
    y = tf.ucla_clip(x, window=52, train=True, rng=np.random.default_rng(seed), layout=UCLA20,
                     rotate_deg=60, scale=(0.5, 1.5))
    rng = np.random.default_rng(seed)  # the same draws, in the same order
    agx, agy = rng.integers(-60, 61, 2).tolist()
    s = rng.uniform(0.5, 1.5)
    frames = np.sort(rng.choice(40 * 100, 52, replace=False) % 40)
    np.testing.assert_allclose(y, reference_ucla_train_clip(x, agx, agy, s, frames), atol=2e-5)


def test_ucla_protocol_leaves_2d_scores_alone():
    from skelact.layouts import get_layout
    coco = get_layout("coco17")
    x = rand_clip(m=1, t=30, v=coco.num_joints)
    x[..., 2] = np.random.default_rng(3).uniform(0.2, 0.9, x.shape[:-1])
    y = tf.ucla_clip(x, window=52, train=False, rng=None, layout=coco)
    frames = [int(i * 29 / 51) for i in range(52)]
    np.testing.assert_array_equal(y[0, :, :, 2], x[0, frames, :, 2])  # scores untouched
    np.testing.assert_allclose(y[..., :2], tf.minmax_normalise(x[:1, ..., :2] - x[0, 0, 1, :2])[:, frames],
                               atol=1e-6)


@pytest.mark.parametrize("name", list(tf.PROTOCOLS))
@pytest.mark.parametrize("t", [1, 3])
@pytest.mark.parametrize("train", [True, False])
def test_short_clips_in_every_protocol(name, t, train):
    proto = tf.PROTOCOLS[name]
    x = rand_clip(m=2, t=t)
    aug = tf.resolve_augment(proto, {"rotate": 0.3, "bone_scale": (0.8, 1.2)} if name != "ucla" else None)
    y = proto.fn(x, window=64, train=train, rng=np.random.default_rng(0), layout=NTU25, **aug)
    assert y.shape == ((1 if proto.single_person else 2), 64, 25, 3)
    assert np.isfinite(y).all()
    for stream in tf.STREAMS:
        assert np.isfinite(tf.to_stream(y, stream, NTU25.parents)).all()


def test_streams():
    x = rand_clip(t=12)
    par = list(NTU25.parents)
    np.testing.assert_array_equal(tf.to_stream(x, "j", par), x)
    b = tf.to_stream(x, "b", par)
    assert not b[:, :, NTU25.center].any()
    for v in range(25):
        np.testing.assert_allclose(b[:, :, v], x[:, :, v] - x[:, :, par[v]])
    jm = tf.to_stream(x, "jm", par)
    assert not jm[:, -1].any()
    np.testing.assert_allclose(jm[:, 3], x[:, 4] - x[:, 3])
    bm = tf.to_stream(x, "bm", par)
    assert not bm[:, -1].any() and not bm[:, :, NTU25.center].any()
    np.testing.assert_allclose(bm[:, :-1], b[:, 1:] - b[:, :-1], atol=1e-6)
    with pytest.raises(SkelactError, match="stream"):
        tf.to_stream(x, "jb", par)


def test_streams_average_confidence_scores_of_2d_layouts():
    from skelact.layouts import get_layout
    coco = get_layout("coco17")
    assert coco.coords == 2 and coco.channels == 3
    x = rand_clip(t=9, v=coco.num_joints)
    x[..., 2] = np.random.default_rng(1).uniform(0, 1, x.shape[:-1])  # scores in [0, 1]
    par = list(coco.parents)
    b = tf.to_stream(x, "b", par, coords=2)
    for v in range(coco.num_joints):
        np.testing.assert_allclose(b[:, :, v, :2], x[:, :, v, :2] - x[:, :, par[v], :2])
        np.testing.assert_allclose(b[:, :, v, 2], (x[:, :, v, 2] + x[:, :, par[v], 2]) / 2)
    jm = tf.to_stream(x, "jm", par, coords=2)
    np.testing.assert_allclose(jm[:, 3, :, :2], x[:, 4, :, :2] - x[:, 3, :, :2])
    np.testing.assert_allclose(jm[:, 3, :, 2], (x[:, 4, :, 2] + x[:, 3, :, 2]) / 2)
    assert not jm[:, -1].any()
    bm = tf.to_stream(x, "bm", par, coords=2)
    np.testing.assert_allclose(bm[:, 2, :, 2], (b[:, 3, :, 2] + b[:, 2, :, 2]) / 2)
    assert ((bm[:, :-1, :, 2] >= 0) & (bm[:, :-1, :, 2] <= 1)).all()  # still a score
    # 3-D layouts (coords = channels) are unchanged by the argument
    y = rand_clip(t=9)
    np.testing.assert_array_equal(tf.to_stream(y, "bm", list(NTU25.parents), coords=3),
                                  tf.to_stream(y, "bm", list(NTU25.parents)))


def test_resolve_augment():
    ntu = tf.get_protocol("ntu")
    assert tf.resolve_augment(ntu, None) == {"rotate": 0.3, "bone_scale": (0.8, 1.2)}
    assert tf.resolve_augment(ntu, False) == {}
    assert tf.resolve_augment(ntu, {"bone_scale": None}) == {"rotate": 0.3}
    assert tf.resolve_augment(ntu, {"bone_scale": [0.9, 1.1]})["bone_scale"] == (0.9, 1.1)
    with pytest.raises(SkelactError, match="unknown key"):
        tf.resolve_augment(ntu, {"flip": True})
    with pytest.raises(SkelactError, match="low, high"):
        tf.resolve_augment(ntu, {"bone_scale": 1.1})
    with pytest.raises(SkelactError, match="protocol"):
        tf.get_protocol("w64")
