"""NTU RGB+D: the .skeleton parser (fast path against a plain parser), corruptions, denoising, splits,
prepare_ntu end to end and the CLI."""

import collections
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from skelact.data import ntu
from skelact.data.store import SkeletonStore, apply_split_rule
from skelact.errors import BadSample, SkelactError

FRAMES = {"S001C001P001R001A011": 82, "S001C003P008R002A058": 70, "S002C001P003R001A003": 100,
          "S003C001P015R001A034": 71, "S004C002P003R001A017": 124}
TWO_BODIES = "S001C003P008R002A058"   # handshaking: two people, both tracked in every frame


def plain_parse(data: bytes) -> dict:
    """Obviously-correct reference: line by line, keep x y z of each joint."""
    lines = data.decode().splitlines()
    pos = 1
    bodies = {}
    for frame in range(int(lines[0])):
        count = int(lines[pos])
        pos += 1
        for _ in range(count):
            body_id = int(lines[pos].split()[0])
            assert int(lines[pos + 1]) == 25
            xyz = [[float(v) for v in lines[pos + 2 + j].split()[:3]] for j in range(25)]
            pos += 27
            frames, coords = bodies.setdefault(body_id, ([], []))
            frames.append(frame)
            coords.append(xyz)
    return {k: (np.array(f), np.array(c, dtype=np.float32)) for k, (f, c) in bodies.items()}


def assert_same(result: dict, reference: dict):
    assert list(result["bodies"]) == list(reference)
    for body_id, (frames, xyz) in reference.items():
        got_frames, got_xyz = result["bodies"][body_id]
        assert got_xyz.dtype == np.float32 and got_xyz.shape == (len(frames), 25, 3)
        np.testing.assert_array_equal(got_frames, frames)
        assert np.array_equal(got_xyz.view(np.uint32), xyz.view(np.uint32))   # bit for bit


@pytest.fixture
def ntu_files(shared_data):
    files = sorted((shared_data / "ntu_samples").glob("*.skeleton"))
    if [f.stem for f in files] != list(FRAMES):
        pytest.skip(f"the five NTU sample files are not all in {shared_data / 'ntu_samples'}")
    return files


# --------------------------------------------------------------------------------------------- parser


def test_real_files_parse(ntu_files):
    for path in ntu_files:
        result = ntu.read_skeleton(path)
        assert result["num_frames"] == FRAMES[path.stem]
        bodies = result["bodies"]
        assert len(bodies) == (2 if path.stem == TWO_BODIES else 1)
        for body_id, (frames, xyz) in bodies.items():
            assert body_id > 2 ** 53                       # 17-digit Kinect ids, exact as int
            np.testing.assert_array_equal(frames, np.arange(FRAMES[path.stem]))
            assert np.isfinite(xyz).all() and 0.5 < np.abs(xyz[..., 2]).mean() < 8   # metres from the camera


def test_fast_parser_equals_plain_parser_on_real_files(ntu_files):
    for path in ntu_files:
        data = path.read_bytes()
        reference = plain_parse(data)
        assert_same(ntu.read_skeleton(path), reference)
        assert_same(ntu.read_skeleton(path, fast=False), reference)
        assert ntu._parse_fast(ntu._read_padded(path), len(data)) is not None   # really the fast path


NUMBER_FORMATS = [   # up to 13 characters: all on the fast path (exponents through its float() fallback)
    lambda v: f"{v:.7g}", lambda v: f"{v:.9f}", lambda v: f"{v:.3f}", lambda v: f"{v:.6E}",
    lambda v: f"{round(v)}", lambda v: f"{v:.1f}".replace("0.", "."), lambda v: f"{v:.10f}",
    lambda v: f"{v:.2f}".rstrip("0"), lambda v: f"{v:+.4f}", lambda v: "-0", lambda v: "0",
]
LONG_FORMATS = NUMBER_FORMATS + [lambda v: f"{v:.14f}", lambda v: f"{v * 1e6:.8f}"]


def synthetic_skeleton(rng, num_frames=30, max_bodies=3, formats=NUMBER_FORMATS, newline="\r\n") -> bytes:
    """Random .skeleton text: 0-3 bodies per frame with ids beyond 2^53, numbers in many formats."""
    ids = [72057594037931648 + k for k in range(max_bodies)]      # adjacent ids: float64 would merge them
    out = [str(num_frames)]
    for _ in range(num_frames):
        present = [i for i in ids if rng.random() < 0.6]
        out.append(str(len(present)))
        for body_id in present:
            out.append(f"{body_id} 0 1 1 1 1 0 {rng.normal():.7g} {rng.normal():.7g} 2")
            out.append("25")
            for _ in range(25):
                xyz = [formats[rng.integers(len(formats))](v) for v in rng.normal(0, [0.5, 0.5, 2], 3)]
                rest = [f"{v:.7g}" for v in rng.normal(300, 100, 8)] + ["2"]
                out.append(" ".join(xyz + rest))
    return (newline.join(out) + newline).encode()


@pytest.mark.parametrize("seed", range(12))
def test_fast_parser_equals_plain_parser_on_random_files(seed):
    rng = np.random.default_rng(seed)
    data = synthetic_skeleton(rng, formats=NUMBER_FORMATS if seed < 6 else LONG_FORMATS,
                              newline="\r\n" if seed % 2 else "\n")
    reference = plain_parse(data)
    if not reference:
        pytest.skip("no body drawn")
    assert_same(ntu.parse_skeleton(data), reference)
    assert_same(ntu.parse_skeleton(data, fast=False), reference)
    if seed < 6:   # regular layout, numbers up to 13 characters: the fast path itself, not its fallback
        buf = np.full(len(data) + ntu._PAD, 32, np.uint8)
        buf[:len(data)] = np.frombuffer(data, np.uint8)
        assert ntu._parse_fast(buf, len(data)) is not None


def test_irregular_layout_goes_to_the_careful_parser():
    rng = np.random.default_rng(0)
    data = synthetic_skeleton(rng, num_frames=15)
    reference = plain_parse(data)
    for variant in (data.replace(b" ", b"  "), data.rstrip(), data.replace(b"\r\n", b" \r\n"),
                    b"\r\n" + data.replace(b"\r\n25\r\n", b"\r\n\r\n25\r\n")):
        assert_same(ntu.parse_skeleton(variant), reference)


def corrupt_used_value(data: bytes, rng, token: bytes) -> bytes:
    """Replace one value the parser keeps (a count, a body id, or an x/y/z) by token."""
    lines = data.split(b"\r\n")
    while True:
        i = int(rng.integers(len(lines) - 1))
        values = lines[i].split(b" ")
        if len(values) in (1, 10, 12):
            values[0 if len(values) < 12 else int(rng.integers(3))] = token
            lines[i] = b" ".join(values)
            return b"\r\n".join(lines)


def assert_bad(data: bytes, *words: str) -> str:
    messages = []
    for fast in (True, False):
        with pytest.raises(BadSample) as info:
            ntu.parse_skeleton(data, fast=fast)
        message = str(info.value)
        assert message and "\n" not in message
        assert any(w in message for w in words), message
        messages.append(message)
    assert messages[0] == messages[1]                 # the fast path defers: the careful parser's reason
    if ntu._ntuparse is not None:
        c_against_careful(data)
    return message


def test_corruptions_give_bad_sample(ntu_files):
    data = ntu_files[3].read_bytes()
    rng = np.random.default_rng(1)
    for _ in range(60):       # truncated anywhere (only the final CR LF may go)
        assert_bad(data[:int(rng.integers(0, len(data) - 2))], "truncated", "frame count", "values",
                   "empty", "whole number", "no skeleton", "negative")
    for token in [b"abc", b"1.2.3", b"--1", b"x7", b"1e", b"#", b"0x1F", b"\x00\x01", b"\xff", b"1,5", b"."]:
        for _ in range(6):
            assert_bad(corrupt_used_value(data, rng, token), "non-numeric", "whole number", "frame count",
                       "joints", "body", "values")
    for token in [b"nan", b"inf", b"-inf", b"NaN"]:
        lines = data.split(b"\r\n")
        lines[5] = token + lines[5][lines[5].index(b" "):]            # x of the first joint
        assert_bad(b"\r\n".join(lines), "NaN or infinite")
    assert_bad(data.replace(b"\r\n25\r\n", b"\r\n24\r\n", 1), "24 joints")
    lines = data.split(b"\r\n")                                       # 24 joints, one joint line fewer
    assert_bad(b"\r\n".join(lines[:3] + [b"24"] + lines[4:28] + lines[29:]), "24 joints")
    assert_bad(data.replace(b"71\r\n", b"72\r\n", 1), "frame count mismatch")
    assert_bad(data.replace(b"71\r\n", b"70\r\n", 1), "frame count mismatch")
    assert_bad(b"", "empty file")
    assert_bad(b" \r\n\r\n", "empty file")
    assert_bad(b"3\r\n0\r\n0\r\n0\r\n", "no skeleton")
    assert_bad(b"0\r\n", "no skeleton")
    assert_bad(bytes(rng.integers(0, 256, 5000, dtype=np.uint8)), "whole number", "frame count", "truncated",
               "values", "empty")


def test_unused_columns_are_counted_not_converted(ntu_files):
    data = ntu_files[3].read_bytes()
    reference = plain_parse(data)
    lines = data.split(b"\r\n")
    values = lines[10].split(b" ")
    values[7] = b"abc"                                                # a joint's orientation, not kept
    assert_same(ntu.parse_skeleton(b"\r\n".join(lines[:10] + [b" ".join(values)] + lines[11:])), reference)
    assert_bad(b"\r\n".join(lines[:10] + [b" ".join(values[:11])] + lines[11:]), "11 values")


# ------------------------------------------------------------------------- the optional C accelerator

needs_c = pytest.mark.skipif(ntu._ntuparse is None, reason="C accelerator skelact.data._ntuparse not built")


def padded(data: bytes) -> np.ndarray:
    buf = np.full(len(data) + ntu._PAD, 32, np.uint8)
    buf[:len(data)] = np.frombuffer(data, np.uint8)
    return buf


def c_against_careful(data: bytes) -> str:
    """The C parser on data against the careful parser: the same result, or None (it defers) -> how it went.

    "rejected": the careful parser raises and C deferred; "deferred": C left a good file to Python;
    "taken": C parsed it, bit for bit as the careful parser (counts, ids, frames, x y z, body order)."""
    got = ntu._ntuparse.parse(data)
    try:
        want = ntu._parse_careful(data)
    except BadSample as e:
        assert got is None, f"C took a file the careful parser rejects: {e}"
        return "rejected"
    if got is None:
        return "deferred"
    result = ntu._parse_c(padded(data), len(data))
    assert result["num_frames"] == want["num_frames"]
    assert_same(result, want["bodies"])
    return "taken"


@needs_c
def test_c_parser_equals_python_parsers_on_real_files(ntu_files, monkeypatch):
    for path in ntu_files:
        data = path.read_bytes()
        assert c_against_careful(data) == "taken"
        reference = plain_parse(data)
        assert_same(ntu._parse_c(padded(data), len(data)), reference)
        assert_same(ntu._parse_fast(padded(data), len(data)), reference)    # the numpy path, too
    monkeypatch.setattr(ntu, "_parse_fast", None)                           # read_skeleton: C alone
    monkeypatch.setattr(ntu, "_parse_careful", None)
    for path in ntu_files:
        result = ntu.read_skeleton(path)
        assert_same(result, plain_parse(path.read_bytes()))
        assert result["num_frames"] == FRAMES[path.stem]
        assert all(type(k) is int for k in result["bodies"])
        for frames, xyz in result["bodies"].values():
            assert frames.dtype == np.int64 and frames.flags.writeable and xyz.flags.writeable


@needs_c
@pytest.mark.parametrize("seed", range(12))
def test_c_parser_equals_plain_parser_on_random_files(seed):
    rng = np.random.default_rng(seed)
    data = synthetic_skeleton(rng, formats=NUMBER_FORMATS if seed < 6 else LONG_FORMATS,
                              newline="\r\n" if seed % 2 else "\n")
    assert c_against_careful(data) == "taken"
    for variant in (data.replace(b" ", b" \t "), data.rstrip(), b"\n \n" + data + b"\r\n\n  "):
        assert c_against_careful(variant) == "taken"                         # irregular blanks: C too
    if plain_parse(data):
        assert_same(ntu._parse_c(padded(data), len(data)), plain_parse(data))


@needs_c
def test_c_parser_numbers_bit_for_bit():
    """Decimal tokens of every length and form, and edge values, against float32(float(token))."""
    rng = np.random.default_rng(7)
    tokens = ["-0", "0", "+0", "1.", ".5", "-.5", "+.25", "0.0", "007.50", "1e5", "1.5E-3", "-2e+2",
              "1e-40", "1.4e-45", "7e-46", "1e-320", "3.4028234e38", "-3.40282346638528e38", "1.17549435e-38",
              "0.1", "16777217", "16777219", "0.30000001192092896",
              "9007199254740993", "123456789012345678901234567890", "1." + "0" * 40 + "1",
              "0.000000000000000000000001", "0." + "1" * 61]
    for _ in range(3000):
        digits = "".join(rng.choice(list("0123456789"), int(rng.integers(1, 25))))
        dot = int(rng.integers(0, len(digits) + 1))
        sign = rng.choice(["", "-", "+"])
        token = digits if rng.random() < 0.1 else sign + digits[:dot] + "." + digits[dot:]
        if rng.random() < 0.1:
            token += f"e{int(rng.integers(-50, 14))}"
        tokens.append(token)
    tokens += [f"{v:.9g}" for v in rng.normal(0, 1, 500).astype(np.float32)]   # float32 round trips
    tokens += [repr(float(np.nextafter(np.float32(v), np.float32(1)) / 2 + np.float32(v) / 2))   # ties
               for v in rng.normal(0, 1, 500).astype(np.float32)]
    tokens += ["0"] * (-len(tokens) % 75)
    lines = [str(len(tokens) // 75)]
    for body in range(len(tokens) // 75):
        lines += ["1", f"{72057594037927936 + body} 0 1 1 1 1 0 0 0 2", "25"]
        lines += [" ".join(tokens[75 * body + 3 * j:75 * body + 3 * j + 3] + ["1"] * 9) for j in range(25)]
    data = ("\r\n".join(lines) + "\r\n").encode()
    assert c_against_careful(data) == "taken"
    result = ntu._parse_c(padded(data), len(data))
    got = np.concatenate([xyz.ravel() for _, xyz in result["bodies"].values()])
    with np.errstate(over="ignore"):
        want = np.array([np.float32(float(t)) for t in tokens], dtype=np.float32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    for token in ["3.4028235e38", "3.5e38", "1e39", "-1e309", "nan", "inf", "-Infinity", "1_0", "0x1p3", "1e",
                  "1.5.", "--1", "0." + "1" * 62, "\x00", "1\x00", "\xff", "0,5"]:   # C defers
        lines[4] = token + lines[4][lines[4].index(" "):]
        variant = ("\r\n".join(lines) + "\r\n").encode()
        assert ntu._ntuparse.parse(variant) is None
        with np.errstate(over="ignore"):
            assert c_against_careful(variant) in ("deferred", "rejected")


@needs_c
def test_c_parser_body_ids_are_exact():
    record = b"%s 0 1 1 1 1 0 0 0 2\n25\n" + b"0.5 -1.25 3 1 1 1 1 1 1 1 1 2\n" * 25
    for ids, taken in [((b"72057594037931648", b"72057594037931649"), True),
                       ((b"999999999999999999",) * 2, True), ((b"007", b"7"), True),
                       ((b"9999999999999999999", b"9999999999999999998"), False),
                       ((b"+5", b"5"), False), ((b"-5", b"5"), False)]:
        data = b"2\n1\n" + record.replace(b"%s", ids[0]) + b"1\n" + record.replace(b"%s", ids[1])
        assert c_against_careful(data) == ("taken" if taken else "deferred")
        assert list(ntu.parse_skeleton(data)["bodies"]) == list(dict.fromkeys(int(i) for i in ids))


@needs_c
def test_c_parser_on_fuzzed_files(ntu_files):
    """Random damage of every kind: C gives the careful parser's result or defers, never anything else."""
    lines = ntu_files[3].read_bytes().split(b"\r\n")
    lines = [b"20"] + lines[1:1 + 20 * 28] + [b""]                    # its first 20 frames (one body each)
    data = b"\r\n".join(lines)
    rng = np.random.default_rng(3)
    seen = collections.Counter()
    tokens = [b"", b"abc", b"1.2.3", b"--1", b"+7", b"-3", b"1e", b"nan", b"inf", b"1_0", b"0x1F", b"\x00",
              b"\xff", b"1,5", b".", b"25", b"0", b"2", b"1" * 19, b"1" * 70, b"1e400", b"5e38", b"\t", b"\n",
              b"\r", b"1 2", b"007", b"-0", b"\x0b"]
    for _ in range(400):
        kind = rng.integers(6)
        if kind == 0:                                                 # truncated anywhere
            variant = data[:int(rng.integers(0, len(data)))]
        elif kind == 1:                                               # a random byte changed
            variant = bytearray(data)
            variant[int(rng.integers(len(data)))] = int(rng.integers(256))
            variant = bytes(variant)
        elif kind == 2:                                               # a line dropped or repeated
            i = int(rng.integers(len(lines)))
            variant = b"\r\n".join(lines[:i] + lines[i + 1:] if rng.random() < 0.5
                                   else lines[:i + 1] + lines[i:])
        elif kind == 3:                                               # a value of any column replaced
            i = int(rng.integers(len(lines) - 1))
            values = lines[i].split(b" ")
            values[int(rng.integers(len(values)))] = tokens[int(rng.integers(len(tokens)))]
            variant = b"\r\n".join(lines[:i] + [b" ".join(values)] + lines[i + 1:])
        elif kind == 4:                                               # a kept value replaced
            variant = corrupt_used_value(data, rng, tokens[int(rng.integers(len(tokens)))])
        else:                                                         # random bytes
            variant = bytes(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8))
        with np.errstate(over="ignore"):                             # 1e400, 5e38: float32 inf
            seen[c_against_careful(variant)] += 1
            try:
                want = ntu.parse_skeleton(variant, fast=False)
            except BadSample as e:
                with pytest.raises(BadSample) as info:
                    ntu.parse_skeleton(variant)
                assert str(info.value) == str(e)
            else:
                result = ntu.parse_skeleton(variant)
                assert result["num_frames"] == want["num_frames"]
                assert_same(result, want["bodies"])
    assert seen["rejected"] > 50 and seen["taken"] > 20, seen


def test_python_fallback_without_the_c_accelerator(ntu_files, monkeypatch):
    """As where no C compiler was at hand: the numpy fast path and the careful parser do all the work."""
    monkeypatch.setattr(ntu, "_ntuparse", None)
    monkeypatch.setattr(ntu, "_parse_c", None)                      # would fail if called
    test_fast_parser_equals_plain_parser_on_real_files(ntu_files)
    for seed in (1, 8):
        data = synthetic_skeleton(np.random.default_rng(seed), newline="\r\n")
        assert_same(ntu.parse_skeleton(data), plain_parse(data))
    test_irregular_layout_goes_to_the_careful_parser()
    test_corruptions_give_bad_sample(ntu_files)
    test_unused_columns_are_counted_not_converted(ntu_files)
    np.testing.assert_array_equal(ntu.load_clip(ntu_files[1]).shape, (2, FRAMES[TWO_BODIES], 25, 3))


def test_read_skeleton_names_the_file(tmp_path):
    path = tmp_path / "S001C001P001R001A001.skeleton"
    path.write_bytes(b"2\r\n0\r\n")
    with pytest.raises(BadSample, match=r"^S001C001P001R001A001\.skeleton: frame count mismatch"):
        ntu.read_skeleton(path)
    with pytest.raises(BadSample, match="cannot read"):
        ntu.read_skeleton(tmp_path / "missing.skeleton")


# ------------------------------------------------------------------------------------------ denoising


def standing_body(frames, rng, sway=0.05, offset=(0.0, 0.0, 3.0)):
    """A person-shaped body: tall (y spread 1.5 m), narrow (x spread 0.4 m), swaying by sway."""
    frames = np.asarray(frames)
    shape = np.stack([rng.uniform(-0.2, 0.2, 25), np.linspace(-0.75, 0.75, 25), rng.uniform(-0.1, 0.1, 25)],
                     axis=1)
    xyz = shape + np.asarray(offset) + rng.normal(0, sway, (len(frames), 1, 3))
    return frames, xyz.astype(np.float32)


def skeleton(*bodies):
    return {"num_frames": 1 + max(int(f.max()) for f, _ in bodies),
            "bodies": {1000 + i: body for i, body in enumerate(bodies)}}


def test_short_body_is_dropped():
    rng = np.random.default_rng(0)
    long = standing_body(range(40), rng, sway=0.01)
    short = standing_body(range(10, 21), rng, sway=0.5)                # 11 frames, much more motion
    clip = ntu.denoise(skeleton(long, short))
    assert clip.shape == (1, 40, 25, 3) and clip.dtype == np.float32
    np.testing.assert_allclose(clip[0], long[1] - long[1][0, 1], atol=1e-6)


def test_noisy_body_is_dropped():
    rng = np.random.default_rng(1)
    person = standing_body(range(50), rng, sway=0.01)
    frames, noise = standing_body(range(50), rng, sway=0.3)
    noise = noise[..., [1, 0, 2]]                                      # lying: x spread 1.5 m > 0.8 y spread
    assert ntu.noisy_frame_ratio(noise) >= ntu.NOISE_RATIO and ntu.noisy_frame_ratio(person[1]) == 0
    clip = ntu.denoise(skeleton((frames, noise), person))
    assert clip.shape == (1, 50, 25, 3)
    np.testing.assert_allclose(clip[0], person[1] - person[1][0, 1], atol=1e-6)


def test_bodies_that_do_not_overlap_are_merged_and_empty_frames_dropped():
    rng = np.random.default_rng(2)
    first = standing_body(range(0, 30), rng, sway=0.2)                  # most motion: actor 1
    later = standing_body(range(40, 70), rng, sway=0.05)                # no overlap: fills actor 1
    clip = ntu.denoise(skeleton(later, first))
    assert clip.shape == (1, 60, 25, 3)                                 # frames 30-39 hold nobody
    origin = first[1][0, 1]
    np.testing.assert_allclose(clip[0, :30], first[1] - origin, atol=1e-6)
    np.testing.assert_allclose(clip[0, 30:], later[1] - origin, atol=1e-6)


def test_two_actors_and_a_body_overlapping_both_is_dropped():
    rng = np.random.default_rng(3)
    a = standing_body(range(10, 50), rng, sway=0.3)                     # actor 1 (most motion)
    b = standing_body(range(0, 45), rng, sway=0.1, offset=(1, 0, 3))    # overlaps a: actor 2
    c = standing_body(range(20, 40), rng, sway=0.05)                    # overlaps both: dropped
    d = standing_body(range(60, 80), rng, sway=0.02)                    # overlaps neither: actor 1
    clip = ntu.denoise(skeleton(d, c, b, a))
    kept = np.r_[0:50, 60:80]
    assert clip.shape == (2, len(kept), 25, 3)
    origin = a[1][0, 1]                                                 # actor 1's first frame is frame 10
    expect = np.zeros((2, 80, 25, 3), np.float32)
    expect[0, 10:50], expect[0, 60:80] = a[1] - origin, d[1] - origin
    expect[1, 0:45] = b[1] - origin
    np.testing.assert_allclose(clip, expect[:, kept], atol=1e-6)
    assert (clip[0, :10] == 0).all() and (clip[1, 45:] == 0).all()     # absent: zeros, not shifted


def test_actor_assignment_edges_follow_sgn():
    rng = np.random.default_rng(6)
    a = standing_body(range(20, 40), rng, sway=0.5)                     # actor 1
    b = standing_body(range(30, 50), rng, sway=0.25, offset=(1, 0, 3))  # overlaps a: actor 2, span [0, 49]
    touch = standing_body(range(39, 60), rng, sway=0.12)                # shares only frame 39 with a: merged
    early = standing_body(range(10, 25), rng, sway=0.02)                # overlaps a, and b's [0, 49]: dropped
    clip = ntu.denoise(skeleton(early, touch, b, a))
    assert clip.shape == (2, 40, 25, 3)                                 # frames 20-59
    origin = a[1][0, 1]
    np.testing.assert_allclose(clip[0, :19], a[1][:19] - origin, atol=1e-6)
    np.testing.assert_allclose(clip[0, 19:], touch[1] - origin, atol=1e-6)  # frame 39: the later body
    np.testing.assert_allclose(clip[1, 10:30], b[1] - origin, atol=1e-6)
    assert not clip[1, :10].any() and not clip[1, 30:].any()


def test_motion_is_the_pooled_variance_of_the_sgn_pipeline():
    """SGN ranks bodies by sum(var(joints stacked as (T*25, 3), axis=0)), taking the smaller of that and
    the same over the clean frames for a body with some noisy frames; checked against explicit loops."""
    rng = np.random.default_rng(5)
    _, xyz = standing_body(range(30), rng, sway=0.2)
    pts = [p for frame in xyz for p in frame]                          # T*25 points of 3 values

    def pooled_variance(points):
        total = 0.0
        for axis in range(3):
            vals = [float(p[axis]) for p in points]
            mean = sum(vals) / len(vals)
            total += sum((v - mean) ** 2 for v in vals) / len(vals)
        return total

    assert ntu.motion(xyz) == pytest.approx(pooled_variance(pts), rel=1e-9)
    noisy = xyz.copy()
    noisy[:5] = noisy[:5][..., [1, 0, 2]] * 3                          # 5 lying, spread-out frames
    assert 0 < ntu.noisy_frame_ratio(noisy) < ntu.NOISE_RATIO
    full = pooled_variance([p for frame in noisy for p in frame])
    clean = pooled_variance([p for frame in noisy[5:] for p in frame])
    assert clean < full and ntu.motion(noisy) == pytest.approx(clean, rel=1e-9)
    # a still but wide body outranks a small one that sways a little: extent counts, as in SGN
    wide = xyz[:1].repeat(30, 0) * np.float32(2)
    assert ntu.motion(wide) > ntu.motion(standing_body(range(30), rng, sway=0.05)[1] * np.float32(0.5))


def test_centring_on_joint_2_of_actor_1_first_frame():
    rng = np.random.default_rng(4)
    frames, xyz = standing_body(range(5, 35), rng, sway=0.1)
    clip = ntu.denoise(skeleton((frames, xyz)))
    np.testing.assert_array_equal(clip[0, 0, 1], 0)
    np.testing.assert_allclose(clip[0] + xyz[0, 1], xyz, atol=1e-6)


def test_denoising_never_returns_an_empty_clip():
    rng = np.random.default_rng(5)
    tiny = [standing_body(range(k, k + 3 + k), rng) for k in range(3)]  # all <= 11 frames
    clip = ntu.denoise(skeleton(*tiny))
    assert clip.shape == (1, 5, 25, 3)                                   # the longest: 5 frames
    frames, noise = standing_body(range(30), rng)
    clip = ntu.denoise(skeleton((frames, noise[..., [1, 0, 2]])))       # the only body is noisy
    assert clip.shape == (1, 30, 25, 3)


def test_when_every_body_is_noisy_the_last_in_file_order_is_kept_as_in_sgn():
    """SGN's spread stage deletes noisy bodies in file order but stops when one is left, so the last
    body survives — here the shorter, noisier one, not the longest."""
    rng = np.random.default_rng(7)
    lying = [standing_body(range(n), rng, sway=s) for n, s in ((40, 0.3), (30, 0.1))]
    lying = [(frames, xyz[..., [1, 0, 2]]) for frames, xyz in lying]
    assert all(ntu.noisy_frame_ratio(xyz) >= ntu.NOISE_RATIO for _, xyz in lying)
    clip = ntu.denoise(skeleton(*lying))
    assert clip.shape == (1, 30, 25, 3)
    np.testing.assert_allclose(clip[0], lying[1][1] - lying[1][1][0, 1], atol=1e-6)


def test_real_two_person_clip_keeps_both(ntu_files):
    for path in ntu_files:
        clip = ntu.load_clip(path)
        assert clip.dtype == np.float32 and np.isfinite(clip).all()
        assert clip.shape == ((2 if path.stem == TWO_BODIES else 1), FRAMES[path.stem], 25, 3)
        np.testing.assert_array_equal(clip[0, 0, 1], 0)
        assert (np.abs(clip).sum(axis=(2, 3)) > 0).all()                # every actor in every frame


# --------------------------------------------------------------------------------------- names, splits


def test_parse_name():
    assert ntu.parse_name("S017C003P020R002A060") == {"setup": 17, "view": 3, "subject": 20,
                                                      "replication": 2, "action": 60}
    assert ntu.parse_name("S01C003P020R002A060") is None and ntu.parse_name("x") is None
    assert len(ntu.CLASS_NAMES) == 120 and len(set(ntu.CLASS_NAMES)) == 120
    assert ntu.CLASS_NAMES[58] == "walking towards each other" and ntu.CLASS_NAMES[119].startswith("finger")


@pytest.mark.parametrize("variant, expected", [
    ("ntu60", {"xsub": (40091, 16487), "xview": (37646, 18932)}),
    ("ntu120", {"xsub": (63026, 50919), "xset": (54468, 59477)}),
])
def test_official_split_counts(shared_data, variant, expected):
    listing = shared_data / "ntu_statistics" / f"{variant}_skes_available_name.txt"
    if not listing.is_file():
        pytest.skip(f"{listing} not found")
    names = listing.read_text().split()
    fields = [ntu.parse_name(name) for name in names]
    assert None not in fields
    columns = {key: np.array([f[key] for f in fields]) for key in fields[0]}
    assert columns["action"].max() == ntu.NUM_CLASSES[variant]
    assert columns["setup"].max() == ntu.NUM_SETUPS[variant]
    assert set(ntu.SPLITS[variant]) == set(expected)
    for split, (train, test) in expected.items():
        rule = ntu.SPLITS[variant][split]
        assert len(apply_split_rule(rule, columns, "train")) == train
        assert len(apply_split_rule(rule, columns, "test")) == test


# ------------------------------------------------------------------------------------- prepare, CLI


@pytest.fixture
def raw_dir(tmp_path, ntu_files):
    raw = tmp_path / "raw"
    (raw / "part2").mkdir(parents=True)
    for path in ntu_files:
        (raw / path.name).symlink_to(path)
    data = ntu_files[0].read_bytes()
    (raw / "part2" / "S001C002P002R001A011.skeleton").write_bytes(data[:len(data) // 2])   # truncated
    (raw / "notes.skeleton").write_bytes(data)                                               # bad name
    (raw / "S018C001P001R001A061.skeleton").symlink_to(ntu_files[0])                          # NTU120 only
    return raw


def test_prepare_ntu60_skips_bad_files(raw_dir, tmp_path, ntu_files):
    out = tmp_path / "store"
    summary = ntu.prepare_ntu("ntu60", [raw_dir], out=out, workers=1)
    assert summary["num_samples"] == 5 and summary["ignored"] == 1
    skipped = {item["name"]: item["reason"] for item in summary["skipped"]}
    assert set(skipped) == {"S001C002P002R001A011", "notes"}
    assert "truncated" in skipped["S001C002P002R001A011"] and "SsssCccc" in skipped["notes"]
    assert summary["splits"] == {"xsub": {"train": 3, "test": 2}, "xview": {"train": 2, "test": 3}}
    store = SkeletonStore(out)
    assert list(store.names) == list(FRAMES) and len(store.class_names) == 60
    assert list(store.labels) == [10, 57, 2, 33, 16]
    assert list(store.index["subject"]) == [1, 8, 3, 15, 3] and list(store.index["view"]) == [1, 3, 1, 1, 2]
    for i, path in enumerate(ntu_files):
        clip = ntu.load_clip(path)
        np.testing.assert_array_equal(store.clip(i)[:len(clip)], clip)
        assert store.clip(i).shape == (2, FRAMES[path.stem], 25, 3)


def test_prepare_ntu120_with_worker_processes(tmp_path, ntu_files):
    raw = tmp_path / "raw"
    raw.mkdir()
    for k in range(24):                                               # enough files for the process pool
        (raw / f"S{1 + k % 32:03d}C001P{1 + k:03d}R001A{61 + k:03d}.skeleton").symlink_to(ntu_files[k % 5])
    summary = ntu.prepare_ntu("ntu120", raw, out=tmp_path / "store", workers=2, dtype="float16")
    assert summary["num_samples"] == 24 and not summary["skipped"]
    store = SkeletonStore(tmp_path / "store")
    assert store.meta["dtype"] == "float16" and len(store.class_names) == 120
    for i in range(24):
        clip = ntu.load_clip(ntu_files[i % 5])
        np.testing.assert_allclose(store.clip(i)[:len(clip)], clip, atol=2e-3)


def test_prepare_strict_raises_and_writes_nothing(raw_dir, tmp_path):
    (raw_dir / "notes.skeleton").unlink()
    out = tmp_path / "store"
    with pytest.raises(SkelactError, match=r"S001C002P002R001A011\.skeleton: truncated"):
        ntu.prepare_ntu("ntu60", raw_dir, out=out, workers=1, strict=True)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".store")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SkelactError, match="no .skeleton files"):
        ntu.prepare_ntu("ntu60", tmp_path / "empty", out=out, workers=1)
    with pytest.raises(SkelactError, match="not a directory"):
        ntu.prepare_ntu("ntu60", tmp_path / "missing", out=out, workers=1)


def test_cli_prepare_exit_codes(raw_dir, tmp_path):
    (raw_dir / "notes.skeleton").unlink()
    env = {**os.environ, "PYTHONPATH": str(Path(ntu.__file__).parents[2])}
    run = lambda *args: subprocess.run([sys.executable, "-m", "skelact", "prepare", "ntu60", "--raw",
                                        str(raw_dir), *args], capture_output=True, text=True, env=env)
    ok = run("--out", str(tmp_path / "a"), "--workers", "1")
    assert ok.returncode == 0, ok.stderr
    assert "wrote 5 clips" in ok.stdout and "S001C002P002R001A011: truncated" in ok.stdout
    bad = run("--out", str(tmp_path / "b"), "--strict")
    assert bad.returncode == 2
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "S001C002P002R001A011.skeleton: truncated" in last
    assert "Traceback" not in bad.stderr and not (tmp_path / "b").exists()
