"""NTU RGB+D: the .skeleton parser (fast path against a plain parser), corruptions, denoising, splits,
prepare_ntu end to end and the CLI."""

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
    assert [f.stem for f in files] == list(FRAMES)
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
    for fast in (True, False):
        with pytest.raises(BadSample) as info:
            ntu.parse_skeleton(data, fast=fast)
        message = str(info.value)
        assert message and "\n" not in message
        assert any(w in message for w in words), message
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
    names = (shared_data / "ntu_statistics" / f"{variant}_skes_available_name.txt").read_text().split()
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
