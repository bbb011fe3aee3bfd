"""NTU RGB+D 60 / 120: a fast ``.skeleton`` parser, the standard denoising, and ``prepare ntu60|ntu120``.

File layout (DATA.md): line 1 = frame count; per frame: body count; per body: one line of 10 values
(bodyID first), the joint count (25), then 25 lines of 12 values of which we keep x y z.

:func:`read_skeleton` first tries a fast parser: the optional C accelerator ``_ntuparse`` (compiled at
installation where a C compiler exists) for any well-formed file, else a vectorised parser that handles
the regular layout the Kinect tools write (one space between values, one value line per joint) with a
few whole-file numpy passes. Anything the fast parser leaves (a corrupt file, odd values; for the numpy
parser also extra whitespace or a missing final newline) goes to a careful line-by-line parser, which
gives the same result or the precise reason the file is unusable.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import multiprocessing
import os
import re
from pathlib import Path

import numpy as np

from ..errors import BadSample, SkelactError

try:
    from . import _ntuparse      # optional C accelerator (setup.py); absent: the numpy parser, same results
except ImportError:
    _ntuparse = None

NUM_JOINTS = 25

# ---------------------------------------------------------------------------------------------------------
# Facts: class names, name pattern, split rules (DATA.md)

CLASS_NAMES = (
    "drink water", "eat meal/snack", "brushing teeth", "brushing hair", "drop", "pickup", "throw",
    "sitting down", "standing up (from sitting position)", "clapping", "reading", "writing",
    "tear up paper", "wear jacket", "take off jacket", "wear a shoe", "take off a shoe", "wear on glasses",
    "take off glasses", "put on a hat/cap", "take off a hat/cap", "cheer up", "hand waving",
    "kicking something", "reach into pocket", "hopping (one foot jumping)", "jump up",
    "make a phone call/answer phone", "playing with phone/tablet", "typing on a keyboard",
    "pointing to something with finger", "taking a selfie", "check time (from watch)",
    "rub two hands together", "nod head/bow", "shake head", "wipe face", "salute",
    "put the palms together", "cross hands in front (say stop)", "sneeze/cough", "staggering", "falling",
    "touch head (headache)", "touch chest (stomachache/heart pain)", "touch back (backache)",
    "touch neck (neckache)", "nausea or vomiting condition", "use a fan (with hand or paper)/feeling warm",
    "punching/slapping other person", "kicking other person", "pushing other person",
    "pat on back of other person", "point finger at the other person", "hugging other person",
    "giving something to other person", "touch other person's pocket", "handshaking",
    "walking towards each other", "walking apart from each other",
    # NTU RGB+D 120 adds 61-120
    "put on headphone", "take off headphone", "shoot at the basket", "bounce ball", "tennis bat swing",
    "juggling table tennis balls", "hush (quite)", "flick hair", "thumb up", "thumb down", "make ok sign",
    "make victory sign", "staple book", "counting money", "cutting nails", "cutting paper (using scissors)",
    "snapping fingers", "open bottle", "sniff (smell)", "squat down", "toss a coin", "fold paper",
    "ball up paper", "play magic cube", "apply cream on face", "apply cream on hand back", "put on bag",
    "take off bag", "put something into a bag", "take something out of a bag", "open a box",
    "move heavy objects", "shake fist", "throw up cap/hat", "hands up (both hands)", "cross arms",
    "arm circles", "arm swings", "running on the spot", "butt kicks (kick backward)", "cross toe touch",
    "side kick", "yawn", "stretch oneself", "blow nose", "hit other person with something",
    "wield knife towards other person", "knock over other person (hit with body)",
    "grab other person's stuff", "shoot at other person with a gun", "step on foot", "high-five",
    "cheers and drink", "carry something with other person", "take a photo of other person",
    "follow other person", "whisper in other person's ear", "exchange things with other person",
    "support somebody with hand", "finger-guessing game (playing rock-paper-scissors)",
)
NUM_CLASSES = {"ntu60": 60, "ntu120": 120}
NUM_SETUPS = {"ntu60": 17, "ntu120": 32}
NAME_PATTERN = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")

NTU60_XSUB_TRAIN = (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
NTU120_XSUB_TRAIN = NTU60_XSUB_TRAIN + (45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80,
                                        81, 82, 83, 84, 85, 86, 89, 91, 92, 93, 94, 95, 97, 98, 100, 103)
SPLITS = {
    "ntu60": {"xsub": {"column": "subject", "train": list(NTU60_XSUB_TRAIN)},
              "xview": {"column": "view", "train": [2, 3]}},
    "ntu120": {"xsub": {"column": "subject", "train": list(NTU120_XSUB_TRAIN)},
               "xset": {"column": "setup", "train": list(range(2, NUM_SETUPS["ntu120"] + 1, 2))}},
}


def parse_name(name: str) -> dict[str, int] | None:
    """``SsssCcccPpppRrrrAaaa`` -> {setup, view, subject, replication, action} (1-based), or None."""
    m = NAME_PATTERN.fullmatch(name)
    if m is None:
        return None
    return dict(zip(("setup", "view", "subject", "replication", "action"), map(int, m.groups())))


# ---------------------------------------------------------------------------------------------------------
# Parsing

_PAD = 64                                   # spaces after the file: every 16-byte read stays inside
_W = 14                                     # rows of a number window: numbers of <= 13 characters are fast
_ROW = np.arange(_W, dtype=np.uint8)[:, None]
_HALVES = np.zeros((2, _W), dtype=np.float32)                    # see _numbers: digit weights by row,
_HALVES[0, :7] = _HALVES[1, 7:] = 10.0 ** np.arange(6, -1, -1)   # in two halves of 7 rows
_TEN = 10.0 ** np.arange(_W + 1)


def read_skeleton(path: str | os.PathLike, *, fast: bool = True) -> dict:
    """Parse one ``.skeleton`` file.

    Returns ``{"num_frames": F, "bodies": {body_id: (frames, xyz)}}`` with, per body (in order of first
    appearance), ``frames`` int64 (T_b,) the 0-based frame indices it appears in and ``xyz`` float32
    (T_b, 25, 3). ``fast=False`` uses only the careful line-by-line parser (same result, slower).
    ``ntu._ntuparse`` is the C accelerator, None where it was not compiled.
    Raises :class:`BadSample` ``"<file>: <reason>"`` for an unusable file.
    """
    path = Path(path)
    try:
        return _parse(_read_padded(path), fast=fast)
    except BadSample as e:
        raise BadSample(f"{path.name}: {e}") from None


def parse_skeleton(data: bytes, *, fast: bool = True) -> dict:
    """:func:`read_skeleton` for the bytes of a file; raises :class:`BadSample` with the reason."""
    buf = np.full(len(data) + _PAD, 32, dtype=np.uint8)
    buf[:len(data)] = np.frombuffer(data, dtype=np.uint8)
    return _parse(buf, fast=fast)


def _read_padded(path: Path) -> np.ndarray:
    """The file's bytes followed by ``_PAD`` spaces, as uint8 (size + _PAD,)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            buf = np.empty(size + _PAD, dtype=np.uint8)
            got = f.readinto(memoryview(buf)[:size])
    except OSError as e:
        raise BadSample(f"cannot read ({e.strerror or e})") from None
    buf[got:] = 32
    return buf[:got + _PAD]


def _parse(buf: np.ndarray, fast: bool) -> dict:
    size = len(buf) - _PAD
    if size == 0:
        raise BadSample("empty file")
    result = None
    if fast and _ntuparse is not None:
        result = _parse_c(buf, size)           # always finite: C leaves NaN and inf to the careful parser
    elif fast:
        result = _check_finite(_parse_fast(buf, size))
    if result is None:
        result = _check_finite(_parse_careful(buf[:size].tobytes()))
    if not result["bodies"]:
        raise BadSample(f"no skeleton: none of its {result['num_frames']} frames holds a body")
    return result


def _check_finite(result: dict | None) -> dict | None:
    """result (or None) unchanged; raises BadSample at the first body frame holding NaN or inf."""
    for body_id, (frames, xyz) in (result or {"bodies": {}})["bodies"].items():
        finite = np.isfinite(xyz).all(axis=(1, 2))
        if not finite.all():
            raise BadSample(f"NaN or infinite coordinates (body {body_id}, frame {frames[~finite][0] + 1})")
    return result


def _parse_c(buf: np.ndarray, size: int) -> dict | None:
    """The C accelerator's parse, grouped by body; None when it does not take the file (the careful
    parser decides). C gives per body record, in file order, the body id (an exact int of at most 18
    digits), the frame index and x y z (float32 of the correctly rounded double, as float32(float(value)),
    always finite), the last two in bytearrays (so the arrays are writable)."""
    parsed = _ntuparse.parse(buf[:size])
    if parsed is None:
        return None
    num_frames, ids, frames, xyz = parsed
    frames = np.frombuffer(frames, dtype=np.int64)
    xyz = np.frombuffer(xyz, dtype=np.float32).reshape(-1, NUM_JOINTS, 3)
    if ids and ids.count(ids[0]) == len(ids):                         # one body: the usual case
        return {"num_frames": num_frames, "bodies": {ids[0]: (frames, xyz)}}
    body_of = np.array(ids, dtype=np.int64)
    return {"num_frames": num_frames,
            "bodies": {body_id: (frames[sel], xyz[sel]) for body_id in dict.fromkeys(ids)
                       for sel in [body_of == body_id]}}


def _parse_fast(buf: np.ndarray, size: int) -> dict | None:
    """Vectorised parse of a regular file; None when the file is not regular (the careful parser decides).

    One pass finds the lines. Count lines (frame, body and joint counts) are the short ones, and the gap
    to the previous count line tells a joint count (2 or 27 lines on) from a body count; the positions
    this implies are checked exactly, as is the number of spaces. Then each count and each x, y, z gets a
    window of bytes (x starts its line, y and z follow) and :func:`_numbers` converts them all at once.
    Values the parser does not keep (the other body and joint columns) are counted, not converted.
    """
    b = buf[:size]
    mask = np.equal(b, 10)
    nl = np.flatnonzero(mask)                                        # line ends, (L,)
    if len(nl) < 2 or nl[-1] != size - 1:
        return None
    starts = np.empty_like(nl)
    starts[0], starts[1:] = 0, nl[:-1] + 1
    try:
        num_frames = int(b[:nl[0]].tobytes())
    except ValueError:
        return None
    short = np.flatnonzero(nl[1:] - starts[1:] <= 4) + 1          # count lines after the header, (S,)
    gap = short.copy()
    gap[1:] -= short[:-1]
    is_joint_count = (gap == 2) | (gap == 27)
    body_count_line, joint_count_line = short[~is_joint_count], short[is_joint_count]
    num_bodies = len(joint_count_line)
    if (len(body_count_line) != num_frames or len(nl) != 1 + num_frames + 27 * num_bodies
            or (num_bodies and joint_count_line[0] < body_count_line[0])):
        return None
    frame_of_body = np.searchsorted(body_count_line, joint_count_line) - 1          # (B,)
    per_frame = np.bincount(frame_of_body, minlength=num_frames)                    # (F,)
    before = np.cumsum(per_frame) - per_frame
    if not (np.array_equal(body_count_line, 1 + np.arange(num_frames) + 27 * before)
            and np.array_equal(joint_count_line, body_count_line[frame_of_body] + 2
                               + 27 * (np.arange(num_bodies) - before[frame_of_body]))
            and np.count_nonzero(np.equal(b, 32, out=mask)) == num_bodies * (9 + NUM_JOINTS * 11)):
        return None

    # number windows (14, S + 3J): one column per count and per x, y, z, the number starting in row 0
    joint_start = starts[(joint_count_line[:, None] + 1 + np.arange(NUM_JOINTS)).ravel()]   # (J,)
    s, j = len(short), len(joint_start)
    windows = np.empty((_W, s + 3 * j), dtype=np.uint8)
    inside = np.empty((_W, s + 3 * j), dtype=bool)                  # row is before the first blank
    offsets = np.empty(s + 3 * j, dtype=np.int64)
    lengths = np.empty(s + 3 * j, dtype=np.int64)
    by16 = np.ndarray((len(buf) - 15,), dtype="V16", buffer=buf, strides=(1,))
    for lo, hi, start in ((0, s, starts[short]), (s, s + j, joint_start), (s + j, s + 2 * j, None),
                          (s + 2 * j, s + 3 * j, None)):
        if start is None:                                            # y and z follow the previous value
            start = np.add(offsets[lo - j:lo], lengths[lo - j:lo] + 1, out=offsets[lo:hi])
        offsets[lo:hi] = start
        windows[:, lo:hi] = by16[start].view(np.uint8).reshape(-1, 16)[:, :_W].T
        ins = np.greater(windows[:, lo:hi], 32, out=inside[:, lo:hi])
        for row in range(1, _W):
            ins[row] &= ins[row - 1]
        lengths[lo:hi] = ins.sum(0, dtype=np.uint8)
    if lengths.max() >= _W or ((windows[:, :s] == 46) & inside[:, :s]).any():    # counts: whole numbers
        return None
    values = _numbers(windows, inside, lengths, buf, offsets)
    if values is None:
        return None
    counts, xyz = values[:s], values[s:]
    if not np.array_equal(counts[~is_joint_count], per_frame) or (counts[is_joint_count] != NUM_JOINTS).any():
        return None

    # body ids: the first value of each body line (17 digits: grouped as text, converted with int())
    by24 = np.ndarray((len(buf) - 23,), dtype="V24", buffer=buf, strides=(1,))
    ids = by24[starts[joint_count_line - 1]].view(np.uint8).reshape(-1, 24)        # (B, 24)
    ids[np.arange(24) >= (ids <= 32).argmax(1)[:, None]] = 0
    index: dict[bytes, int] = {}
    body_of = np.array([index.setdefault(key, len(index)) for key in ids.view("S24").ravel().tolist()])
    xyz = xyz.reshape(3, num_bodies, NUM_JOINTS).transpose(1, 2, 0).astype(np.float32)
    bodies = {}
    for key, u in index.items():
        try:
            body_id = int(key)
        except ValueError:
            return None
        sel = np.flatnonzero(body_of == u)
        bodies[body_id] = (frame_of_body[sel], xyz[sel])
    return {"num_frames": num_frames, "bodies": bodies}


def _numbers(windows: np.ndarray, inside: np.ndarray, lengths: np.ndarray, buf: np.ndarray,
             offsets: np.ndarray) -> np.ndarray | None:
    """Decimal numbers from windows (14, N) uint8, number n in column n from row 0 -> float64 (N,).

    ``inside`` (14, N) bool marks the rows before each number's first blank. A regular number
    ``-?d*.?d*`` with its dot in row p (p = its length if it has none) is converted exactly: a float32
    matrix product gives m1 = sum(digit_r * 10^(13 - r)) over its digit rows (as two sums of 7 rows, each
    an exact integer < 10^7, joined in float64), an integer < 2^53. Its digits right of the dot,
    m1 mod 10^(13 - p), belong one place higher, so value = (m1 + 9 (m1 mod 10^(13 - p))) / 10^(14 - p):
    one correctly rounded division of exact integers, hence bit for bit Python's ``float()``. Irregular
    numbers (exponents, stray characters) go through ``float()``; returns None if one is not a number.
    Overwrites windows and inside.
    """
    negative = windows[0] == 45
    is_dot = np.equal(windows, 46)
    is_dot &= inside
    digit = np.subtract(windows, np.uint8(48), out=windows)
    is_digit = np.less(digit, 10)
    is_digit &= inside
    num_dots = is_dot.sum(0, dtype=np.uint8)
    regular = (is_digit.sum(0, dtype=np.uint8) + num_dots + negative == lengths) & (num_dots <= 1) \
        & (lengths > num_dots + negative)
    dot = np.multiply(is_dot, _ROW, out=inside.view(np.uint8)).sum(0, dtype=np.uint8).astype(np.intp)
    np.copyto(dot, np.minimum(lengths, 13), where=num_dots == 0)   # no dot: as if after the last digit
    digit *= is_digit
    halves = _HALVES @ digit.astype(np.float32)                       # (2, N) exact float32 integers
    m1 = halves[0].astype(np.float64) * 1e7 + halves[1]
    scale = _TEN[13 - dot]
    right = m1 - np.floor(m1 / scale) * scale                        # m1 mod 10^(13 - p), exact
    values = (m1 + 9 * right) / (scale * 10)
    np.negative(values, out=values, where=negative)
    for i in np.flatnonzero(~regular):
        try:
            values[i] = float(buf[offsets[i]:offsets[i] + lengths[i]].tobytes())
        except ValueError:
            return None
    return values


def _parse_careful(data: bytes) -> dict:
    """Plain line-by-line parser with precise error messages; blank lines and extra blanks are allowed.

    Like the fast path it converts the values it keeps (counts, body ids, x y z) and only counts the rest.
    """
    lines = [(i + 1, line.split()) for i, line in enumerate(data.split(b"\n")) if line.strip()]
    if not lines:
        raise BadSample("empty file")
    cut = not data.rstrip(b" \t\r").endswith(b"\n")                # the last line may be incomplete
    pos = 0

    def next_line(what: str, count: int) -> tuple[int, list[bytes]]:
        nonlocal pos
        if pos == len(lines):
            raise BadSample(f"truncated: the file ends where {what} should be")
        lineno, tokens = lines[pos]
        pos += 1
        if len(tokens) != count:
            if cut and pos == len(lines):
                raise BadSample(f"truncated: the file ends inside line {lineno} ({what})")
            raise BadSample(f"line {lineno}: {what} has {len(tokens)} values, expected {count}")
        return lineno, tokens

    def whole(what: str, lineno: int, token: bytes) -> int:
        try:
            return int(token)
        except ValueError:
            raise BadSample(f"line {lineno}: {what} is {_show(token)}, not a whole number") from None

    def count(what: str) -> tuple[int, int]:
        lineno, tokens = next_line(what, 1)
        value = whole(what, lineno, tokens[0])
        if value < 0:
            raise BadSample(f"line {lineno}: {what} is negative ({value})")
        return lineno, value

    num_frames = count("the frame count")[1]
    bodies: dict[int, tuple[list[int], list]] = {}
    for frame in range(num_frames):
        if pos == len(lines):
            raise BadSample(f"frame count mismatch: the header says {num_frames} frames, "
                            f"the file holds {frame}")
        for _ in range(count(f"the body count of frame {frame + 1}")[1]):
            lineno, info = next_line(f"a body line of frame {frame + 1}", 10)
            body_id = whole("the body id", lineno, info[0])
            lineno, joints = count(f"the joint count of frame {frame + 1}")
            if joints != NUM_JOINTS:
                raise BadSample(f"line {lineno}: {joints} joints, expected {NUM_JOINTS}")
            xyz = []
            for _ in range(NUM_JOINTS):
                lineno, tokens = next_line(f"a joint line of frame {frame + 1}", 12)
                try:
                    xyz.append([float(t) for t in tokens[:3]])
                except ValueError:
                    bad = next(t for t in tokens[:3] if not _is_float(t))
                    raise BadSample(f"line {lineno}: non-numeric value {_show(bad)}") from None
            frames, coords = bodies.setdefault(body_id, ([], []))
            frames.append(frame)
            coords.append(xyz)
    if pos != len(lines):
        raise BadSample(f"frame count mismatch: the header says {num_frames} frames, "
                        f"more data follows at line {lines[pos][0]}")
    return {"num_frames": num_frames,
            "bodies": {k: (np.asarray(f, dtype=np.int64), np.asarray(c, dtype=np.float32).reshape(-1, 25, 3))
                       for k, (f, c) in bodies.items()}}


def _is_float(token: bytes) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _show(token: bytes) -> str:
    return repr(token[:20].decode("ascii", "replace"))


# ---------------------------------------------------------------------------------------------------------
# Denoising (DATA.md, the SGN / CTR-GCN pipeline)

MIN_FRAMES = 11              # bodies lasting <= 11 frames are dropped
SPREAD_RATIO = 0.8           # a frame is noisy when x-spread > 0.8 * y-spread
NOISE_RATIO = 0.69754        # bodies with a noisy-frame ratio >= this are dropped


def noisy_frames(xyz: np.ndarray) -> np.ndarray:
    """(T,) bool: the frames of one body, xyz (T, 25, 3), whose x-spread exceeds 0.8 x its y-spread."""
    spread = xyz.max(axis=1) - xyz.min(axis=1)                       # (T, 3)
    return spread[:, 0] > SPREAD_RATIO * spread[:, 1]


def noisy_frame_ratio(xyz: np.ndarray) -> float:
    """Fraction of :func:`noisy_frames` of one body."""
    return float(np.mean(noisy_frames(xyz)))


def motion(xyz: np.ndarray) -> float:
    """The SGN pipeline's motion of one body xyz (T, 25, 3): the variance of x, y and z over all its joint
    positions (T·25 points pooled, so body extent counts as well as movement), summed over x, y, z; for a
    body with some noisy frames, the smaller of that and the same over its clean frames only."""
    pooled = float(xyz.reshape(-1, 3).astype(np.float64).var(axis=0).sum())
    clean = ~noisy_frames(xyz)
    if clean.any() and not clean.all():
        pooled = min(pooled, float(xyz[clean].reshape(-1, 3).astype(np.float64).var(axis=0).sum()))
    return pooled


def denoise(skeleton: dict) -> np.ndarray:
    """Turn :func:`read_skeleton`'s bodies into a clip float32 (M, T, 25, 3), M = 1 or 2.

    Drops bodies lasting <= 11 frames (if that would drop every body, the longest is kept: SGN's code
    fails there), then bodies with a noisy-frame ratio >= 0.69754 (if every body is noisy, the last in
    file order is kept, as SGN's loop never deletes the last remaining body); ranks the rest by
    :func:`motion`. Actor 1 is the
    body with most motion; each further body whose frame interval does not overlap actor 1's goes to actor
    1 (filling its missing frames), else, if it does not overlap actor 2's, to actor 2; bodies
    overlapping both are dropped. "Overlap" is SGN's (more than one shared frame; actor 2's interval
    starts as [0, 0]), so the clips are those of the standard pipeline. Frames where both actors are
    missing are dropped, and every present joint is centred on joint 2 (spine middle) of actor 1's first
    frame. Absent actors are zeros.
    """
    bodies = list(skeleton["bodies"].values())                      # [(frames (T_b,), xyz (T_b, 25, 3))]
    if not bodies:
        raise BadSample("no skeleton")
    bodies = _keep(bodies, lambda frames, xyz: len(frames) > MIN_FRAMES,
                   otherwise=max(bodies, key=lambda body: len(body[0])))   # the first of equals
    bodies = _keep(bodies, lambda frames, xyz: noisy_frame_ratio(xyz) < NOISE_RATIO, otherwise=bodies[-1])
    bodies.sort(key=lambda body: motion(body[1]), reverse=True)      # stable: ties keep file order

    actors: list[list] = [[bodies[0]], []]
    # inclusive frame interval per actor; actor 2 starts from SGN's virtual [0, 0], so its span always
    # reaches back to frame 0 (a body lying wholly before actor 2's first body is then dropped, as there)
    spans = [[int(bodies[0][0].min()), int(bodies[0][0].max())], [0, 0]]
    for body in bodies[1:]:
        start, end = int(body[0].min()), int(body[0].max())
        for actor, (lo, hi) in enumerate(spans):
            if min(hi, end) - max(lo, start) <= 0:  # SGN's test: sharing at most one frame is no overlap
                actors[actor].append(body)           # (a shared frame takes the later body's joints)
                spans[actor] = [min(start, lo), max(end, hi)]
                break

    num_frames = max(int(frames.max()) for frames, _ in bodies) + 1
    num_actors = 2 if actors[1] else 1
    clip = np.zeros((num_actors, num_frames, NUM_JOINTS, 3), dtype=np.float32)
    present = np.zeros((num_actors, num_frames), dtype=bool)
    for actor in range(num_actors):
        for frames, xyz in actors[actor]:
            clip[actor, frames] = xyz
            present[actor, frames] = True
    keep = present.any(axis=0)
    clip, present = clip[:, keep], present[:, keep]
    origin = clip[0, np.argmax(present[0]), 1].copy()              # joint 2 of actor 1's first frame
    clip[present] -= origin
    return clip


def _keep(bodies: list, test, otherwise) -> list:
    """The bodies passing test(frames, xyz); if none does, [otherwise]."""
    kept = [body for body in bodies if test(*body)]
    return kept or [otherwise]


def load_clip(path: str | os.PathLike) -> np.ndarray:
    """Read and denoise one ``.skeleton`` file -> float32 (M, T, 25, 3). Raises BadSample "<file>: why"."""
    try:
        return denoise(_parse(_read_padded(Path(path)), fast=True))
    except BadSample as e:
        raise BadSample(f"{Path(path).name}: {e}") from None


# ---------------------------------------------------------------------------------------------------------
# prepare ntu60 | ntu120


def prepare_ntu(variant: str, raw_dirs, *, out, workers: int | None = None, strict: bool = False,
                dtype: str = "float32", overwrite: bool = False) -> dict:
    """Convert raw NTU RGB+D ``.skeleton`` files (one or more folders, searched recursively) to a store.

    ``variant`` "ntu60" keeps actions 1-60 of setups 1-17 (other files are counted as ``ignored``);
    "ntu120" takes all. Files are parsed and denoised by ``workers`` processes (default: all cores) and
    streamed into the store in name order, so memory does not grow with the corpus. Unusable files are
    skipped with their reason; ``strict=True`` raises :class:`SkelactError` at the first one and writes
    nothing. Returns ``{"out", "num_samples", "skipped", "ignored", "splits": {name: {"train", "test"}}}``.
    """
    from tqdm import tqdm

    from .store import SkeletonStore, StoreWriter

    if variant not in SPLITS:
        raise SkelactError(f"unknown NTU variant {variant!r}; use ntu60 or ntu120")
    raw_dirs = [Path(raw_dirs)] if isinstance(raw_dirs, (str, os.PathLike)) else [Path(d) for d in raw_dirs]
    samples, bad, ignored = _collect(variant, raw_dirs)
    if strict and bad:
        raise SkelactError(f"{bad[0][0]}: {bad[0][1]}")
    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    class_names = list(CLASS_NAMES[:NUM_CLASSES[variant]])
    source = {"raw_dirs": [str(d) for d in raw_dirs], "denoising": "SGN/CTR-GCN (DATA.md)",
              "ignored": ignored}
    with StoreWriter(out, dataset=variant, layout="ntu25", class_names=class_names, max_persons=2,
                     dtype=dtype, splits=SPLITS[variant], source=source, overwrite=overwrite) as writer:
        for path, reason in bad:
            writer.skip(path.stem, reason)
        paths = [str(path) for path, _ in samples]
        results = _load_all(paths, workers)
        with tqdm(total=len(paths), desc=f"prepare {variant}", unit="file", mininterval=1.0) as bar:
            for (path, meta), (clip, reason) in zip(samples, results):
                name = Path(path).stem
                if clip is not None:
                    try:
                        writer.add(name, clip, meta["action"] - 1, subject=meta["subject"], view=meta["view"],
                                   setup=meta["setup"], replication=meta["replication"])
                    except BadSample as e:
                        reason = str(e)
                if reason is not None:
                    if strict:
                        raise SkelactError(f"{path}: {reason}")
                    writer.skip(name, reason)
                bar.update()
        writer.commit()
    store = SkeletonStore(out)
    summary = store.summary()
    return {"out": str(out), "num_samples": len(store), "skipped": summary["skipped"], "ignored": ignored,
            "splits": summary["splits"]}


def _collect(variant: str, raw_dirs: list[Path]):
    """([(path, name fields)] sorted by name, [(path, reason)] unusable files, number ignored)."""
    found: dict[str, Path] = {}
    bad: list[tuple[Path, str]] = []
    for folder in raw_dirs:
        if not folder.is_dir():
            raise SkelactError(f"{folder}: not a directory")
        for path in sorted(folder.rglob("*.skeleton")):
            if path.stem in found:
                bad.append((path, f"duplicate of {found[path.stem]}"))
            else:
                found[path.stem] = path
    if not found:
        raise SkelactError(f"{', '.join(map(str, raw_dirs))}: no .skeleton files found")
    samples, ignored = [], 0
    for name in sorted(found):
        meta = parse_name(name)
        if meta is None:
            bad.append((found[name], "file name does not follow SsssCcccPpppRrrrAaaa"))
        elif not (1 <= meta["action"] <= 120 and 1 <= meta["setup"] <= NUM_SETUPS["ntu120"]):
            bad.append((found[name], f"action {meta['action']} / setup {meta['setup']} is not in NTU RGB+D"))
        elif meta["action"] > NUM_CLASSES[variant] or meta["setup"] > NUM_SETUPS[variant]:
            ignored += 1                                             # an NTU120-only sample, preparing ntu60
        else:
            samples.append((found[name], meta))
    return samples, bad, ignored


def _load_result(path: str):
    """Worker: (clip float32 (M, T, 25, 3), None), or (None, reason)."""
    try:
        return denoise(_parse(_read_padded(Path(path)), fast=True)), None
    except BadSample as e:
        return None, str(e)


def _load_all(paths: list[str], workers: int, chunksize: int = 8):
    """Yield _load_result for each path in order; at most two windows of results are ever pending."""
    if workers <= 1 or len(paths) < 2 * chunksize:
        yield from map(_load_result, paths)
        return
    window = max(256, 4 * workers * chunksize)
    batches = (paths[i:i + window] for i in range(0, len(paths), window))
    with _one_blas_thread():                                         # inherited by the spawned workers
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init)
    with pool:
        pending = collections.deque(pool.imap(_load_result, batch, chunksize)
                                    for batch in itertools.islice(batches, 2))
        while pending:
            yield from pending.popleft()
            batch = next(batches, None)
            if batch is not None:
                pending.append(pool.imap(_load_result, batch, chunksize))


@contextlib.contextmanager
def _one_blas_thread():
    """Set the BLAS / OpenMP thread counts to 1 in os.environ for the duration (restored after)."""
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: "1" for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _worker_init() -> None:
    """Parser processes keep freed memory for reuse (glibc): returning it to the OS after every file and
    faulting it back in costs about as much as the parsing itself. Harmless where glibc is absent."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 256 << 20)     # M_TRIM_THRESHOLD
        libc.mallopt(-3, 64 << 20)      # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
