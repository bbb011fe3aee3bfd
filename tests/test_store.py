import json

import numpy as np
import pytest

from skelact.data.store import SkeletonStore, StoreWriter, apply_split_rule, check_clip
from skelact.errors import BadSample, SkelactError
from skelact.layouts import get_layout


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _random_clips(rng, n=12, v=25, max_persons=2):
    """Clips of mixed shapes and lengths, including 1-frame clips and fewer persons than the maximum."""
    clips = []
    for i in range(n):
        t = [1, 1, 2, 7, 40][i % 5] + i
        t = 1 if i in (0, 5) else t
        m = 1 + i % max_persons
        x = rng.normal(size=(m, t, v, 3)).astype(np.float32)
        clips.append(x[0] if i % 3 == 0 and m == 1 else x)  # some as (T, V, C)
    return clips


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    clips = _random_clips(rng)
    names = [f"clip{i:02d}" for i in range(len(clips))]
    with StoreWriter(tmp_path / "s", dataset="test", layout="ntu25", class_names=list("abcd"),
                     max_persons=2, splits={"xs": {"column": "subject", "train": [1, 3]}}) as w:
        for i, (name, x) in enumerate(zip(names, clips)):
            w.add(name, x, i % 4, subject=i % 4, view=i % 3 + 1, setup=7, replication=i, split="train")
        w.commit()
    s = SkeletonStore(tmp_path / "s")
    assert len(s) == len(clips) and list(s.names) == names
    np.testing.assert_array_equal(s.labels, np.arange(len(clips)) % 4)
    assert s.class_names == list("abcd") and s.num_classes == 4 and s.max_persons == 2
    assert s.layout.name == "ntu25"
    for i, x in enumerate(clips):
        x4 = x if x.ndim == 4 else x[None]
        got = s.clip(i)
        assert got.dtype == np.float32 and got.shape == (2, x4.shape[1], 25, 3)
        np.testing.assert_array_equal(got[:x4.shape[0]], x4)
        assert not got[x4.shape[0]:].any()  # absent persons are zeros
        assert s.index["length"][i] == x4.shape[1] and s.index["num_persons"][i] == x4.shape[0]
    assert (s.index["length"] == 1).sum() >= 2
    np.testing.assert_array_equal(s.index["subject"], np.arange(len(clips)) % 4)
    np.testing.assert_array_equal(s.index["replication"], np.arange(len(clips)))
    assert set(s.index["split"]) == {"train"} and set(s.index["setup"]) == {7}
    info = s.summary()
    assert info["num_samples"] == len(clips) and info["frames"]["min"] == 1
    assert info["splits"]["xs"]["train"] + info["splits"]["xs"]["test"] == len(clips)
    json.dumps(info)
    assert _leftovers(tmp_path) == []


def test_float16(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 5, 20, 3)).astype(np.float32)
    with StoreWriter(tmp_path / "s", dataset="t", layout="ucla20", class_names=["a"], max_persons=1,
                     dtype="float16") as w:
        w.add("a", x, 0)
        with pytest.raises(BadSample, match="float16"):
            w.add("big", x * 1e6, 0)
        w.commit()
    s = SkeletonStore(tmp_path / "s")
    assert s.meta["dtype"] == "float16" and s.clip(0).dtype == np.float32
    np.testing.assert_allclose(s.clip(0), x, atol=2e-3)
    assert (tmp_path / "s" / "frames.bin").stat().st_size == x.size * 2
    with pytest.raises(SkelactError, match="dtype"):
        StoreWriter(tmp_path / "t", dataset="t", layout="ucla20", class_names=["a"], max_persons=1,
                    dtype="float64")


def test_extra_columns_and_split_rules(tmp_path):
    x = np.zeros((3, 20, 3), np.float32)
    rules = {"extra": {"column": "fold", "train": ["a"], "test": ["b"]},
             "views": {"column": "view", "train": [1]},
             "given": {"column": "split", "train": ["train"], "test": ["test"]}}
    with StoreWriter(tmp_path / "s", dataset="t", layout="ucla20", class_names=["a", "b"], max_persons=1,
                     splits=rules) as w:
        w.add("c0", x, 0, view=1, split="train")  # no fold: "" (added before the column existed)
        w.add("c1", x, 1, view=2, split="test", fold="a")
        w.add("c2", x, 0, view=1, split="val", fold="b")
        w.add("c3", x, 1, view=3, fold="a")
        with pytest.raises(ValueError, match="reserved"):
            w.add("c4", x, 1, length="x")  # rejected before anything is written
        w.commit()
    s = SkeletonStore(tmp_path / "s")
    assert len(s) == 4 and s.meta["total_frames"] == 12
    assert list(s.index["fold"]) == ["", "a", "b", "a"]
    assert list(s.split("extra", "train")) == [1, 3] and list(s.split("extra", "test")) == [2]
    assert list(s.split("views", "train")) == [0, 2] and list(s.split("views", "test")) == [1, 3]
    assert list(s.split("given", "train")) == [0] and list(s.split("given", "test")) == [1]
    with pytest.raises(SkelactError, match="no split 'xsub'"):
        s.split("xsub")
    with pytest.raises(SkelactError, match="part"):
        s.split("views", "val")


def test_apply_split_rule_matches_a_loop():
    rng = np.random.default_rng(2)
    cols = {"subject": rng.integers(1, 11, size=200), "split": rng.choice(["train", "test", "val"], 200)}
    for rule in ({"column": "subject", "train": [1, 2, 5]},
                 {"column": "subject", "train": [1], "test": [2, 3]},
                 {"column": "split", "train": ["train"], "test": ["val"]}):
        col = cols[rule["column"]]
        train = [i for i in range(200) if col[i] in rule["train"]]
        test = [i for i in range(200)
                if (col[i] in rule["test"] if "test" in rule else col[i] not in rule["train"])]
        assert list(apply_split_rule(rule, cols, "train")) == train
        assert list(apply_split_rule(rule, cols, "test")) == test


def test_exception_inside_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with StoreWriter(tmp_path / "s", dataset="t", layout="ucla20", class_names=["a"], max_persons=1) as w:
            w.add("a", np.zeros((2, 20, 3)), 0)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    # leaving the block without commit also leaves nothing
    with StoreWriter(tmp_path / "s", dataset="t", layout="ucla20", class_names=["a"], max_persons=1) as w:
        w.add("a", np.zeros((2, 20, 3)), 0)
    assert list(tmp_path.iterdir()) == []


def test_store_files_follow_the_umask_and_abandoned_temporaries_go(tmp_path):
    import os
    old = os.umask(0o022)
    try:
        import socket
        host = socket.gethostname()
        dead = tmp_path / f".s.tmp-{host}-999999999-abc"  # a killed prepare's leftovers (no such process)
        live = tmp_path / f".s.tmp-{host}-{os.getpid()}-xyz"  # a concurrent write in a live process
        other = tmp_path / ".s.tmp-otherhost.example-999999999-abc"  # another host's, on a shared disk
        for d in (dead, live, other):
            d.mkdir()
        _write(tmp_path / "s", 2)
        assert not dead.exists() and live.exists() and other.exists()
        # readable by others (a shared dataset), as open() / mkdir() would make them; not owner-only
        assert (tmp_path / "s").stat().st_mode & 0o777 == 0o755
        for name in ("meta.json", "index.npz", "frames.bin"):
            assert (tmp_path / "s" / name).stat().st_mode & 0o777 == 0o644, name
    finally:
        os.umask(old)


def test_empty_store_not_written(tmp_path):
    with pytest.raises(SkelactError, match="no usable clips"):
        with StoreWriter(tmp_path / "s", dataset="t", layout="ucla20", class_names=["a"], max_persons=1) as w:
            w.skip("x", "bad")
            w.commit()
    assert list(tmp_path.iterdir()) == []


def _write(path, n, overwrite=False):
    with StoreWriter(path, dataset="t", layout="ucla20", class_names=["a"], max_persons=1,
                     overwrite=overwrite) as w:
        for i in range(n):
            w.add(f"c{i}", np.full((2, 20, 3), i, np.float32), 0)
        w.commit()


def test_overwrite(tmp_path):
    out = tmp_path / "s"
    out.mkdir()  # an existing empty directory is fine
    _write(out, 2)
    with pytest.raises(SkelactError, match="already exists"):
        _write(out, 3)
    assert len(SkeletonStore(out)) == 2
    with pytest.raises(RuntimeError):  # a failed overwrite keeps the old store
        with StoreWriter(out, dataset="t", layout="ucla20", class_names=["a"], max_persons=1,
                         overwrite=True) as w:
            raise RuntimeError
    assert len(SkeletonStore(out)) == 2
    _write(out, 3, overwrite=True)
    assert len(SkeletonStore(out)) == 3 and SkeletonStore(out).clip(2)[0, 0, 0, 0] == 2
    assert _leftovers(tmp_path) == []


def test_corrupt_store(tmp_path):
    out = tmp_path / "s"
    with pytest.raises(SkelactError, match="not a skelact dataset"):
        SkeletonStore(tmp_path)
    _write(out, 3)
    frames = (out / "frames.bin").read_bytes()
    (out / "frames.bin").write_bytes(frames[:100])  # truncated
    with pytest.raises(SkelactError, match="corrupt"):
        SkeletonStore(out)
    (out / "frames.bin").write_bytes(frames)
    SkeletonStore(out)
    index = (out / "index.npz").read_bytes()
    for junk in (b"junk", index[:200]):  # not a zip / a truncated zip
        (out / "index.npz").write_bytes(junk)
        with pytest.raises(SkelactError, match="corrupt"):
            SkeletonStore(out)
    (out / "index.npz").write_bytes(index)
    meta = json.loads((out / "meta.json").read_text())
    for bad in ({**meta, "layout": "nope"}, {k: v for k, v in meta.items() if k != "total_frames"}, [1]):
        (out / "meta.json").write_text(json.dumps(bad))
        with pytest.raises(SkelactError, match="corrupt"):
            SkeletonStore(out)
    (out / "meta.json").write_text("{not json")
    with pytest.raises(SkelactError, match="corrupt"):
        SkeletonStore(out)
    (out / "meta.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(SkelactError, match="corrupt"):
        SkeletonStore(out)


@pytest.mark.parametrize("shape, fill, match", [
    ((4, 25, 3), np.nan, "NaN"),
    ((4, 25, 3), np.inf, "NaN"),
    ((4, 24, 3), 0, "24 joints"),
    ((4, 25, 2), 0, "channels"),
    ((3, 4, 25, 3), 0, "3 persons"),
    ((0, 25, 3), 0, "no frames"),
    ((4, 25), 0, "shape"),
])
def test_check_clip_rejects(shape, fill, match):
    x = np.zeros(shape, np.float32)
    if x.size:
        x.flat[5] = fill
    with pytest.raises(BadSample, match=match):
        check_clip(x, get_layout("ntu25"), max_persons=2)


def test_writer_bad_samples(tmp_path):
    with StoreWriter(tmp_path / "s", dataset="t", layout="ntu25", class_names=["a", "b"], max_persons=2) as w:
        w.add("ok", np.zeros((3, 25, 3)), 1)
        with pytest.raises(BadSample, match="duplicate"):
            w.add("ok", np.zeros((3, 25, 3)), 1)
        with pytest.raises(BadSample, match="label 2"):
            w.add("x", np.zeros((3, 25, 3)), 2)
        with pytest.raises(BadSample, match="non-numeric"):
            w.add("y", np.full((3, 25, 3), "a"), 0)
        with pytest.raises(BadSample, match="NaN"):
            w.add("z", np.full((3, 25, 3), np.nan), 0)
        w.skip("z", "NaN or infinite coordinates")
        w.commit()
    s = SkeletonStore(tmp_path / "s")
    assert len(s) == 1 and s.summary()["skipped"] == [{"name": "z", "reason": "NaN or infinite coordinates"}]
