import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from skelact.data.store import SkeletonStore
from skelact.data.ucla import ACTIONS, CLASS_NAMES, prepare_ucla
from skelact.errors import SkelactError


@pytest.fixture
def ucla_store(shared_data, tmp_path):
    """The real NW-UCLA prepared into a temporary store (about a second)."""
    raw = shared_data / "nw_ucla"
    if not (raw / "all_sqe").is_dir():
        pytest.skip(f"NW-UCLA not found at {raw}")
    out = tmp_path / "store"
    summary = prepare_ucla(raw, out=out)  # the parent of all_sqe
    return raw / "all_sqe", out, summary


def test_real_ucla(ucla_store):
    raw, out, summary = ucla_store
    s = SkeletonStore(out)
    assert summary["num_samples"] == len(s) == 1484 and summary["skipped"] == []
    assert summary["out"] == str(out)
    assert s.num_classes == 10 and s.class_names == list(CLASS_NAMES)
    assert s.layout.name == "ucla20" and s.max_persons == 1
    assert summary["splits"]["xview"] == {"train": 1020, "test": 464}
    assert summary["splits"]["xsub"] == {"train": 754, "test": 730}
    assert set(s.index["view"][s.split("xview", "train")]) == {1, 2}
    assert set(s.index["subject"][s.split("xsub", "test")]) == {6, 7, 8, 9, 10}
    assert set(s.index["view"]) == {1, 2, 3} and set(s.index["subject"]) == set(range(1, 11))
    # every class present; labels follow the action in the name (a08 -> 6, a12 -> 9)
    assert set(s.labels) == set(range(10))
    actions = np.array([int(n[1:3]) for n in s.names])
    np.testing.assert_array_equal(np.asarray(ACTIONS)[s.labels], actions)
    # the 1-frame clips are kept as they are
    lengths = s.index["length"]
    assert (lengths == 1).sum() == 2 and (lengths < 10).sum() == 10 and lengths.max() == 201
    one = int(np.flatnonzero(lengths == 1)[0])
    assert s.clip(one).shape == (1, 1, 20, 3)


def test_clip_matches_json(ucla_store):
    raw, out, _ = ucla_store
    s = SkeletonStore(out)
    for i in (0, 700, len(s) - 1):
        name = s.names[i]
        data = json.loads((raw / f"{name}.json").read_text())
        np.testing.assert_allclose(s.clip(i)[0], np.asarray(data["skeletons"], np.float32))  # raw coords
        assert s.labels[i] == data["label"] - 1
        _, subject, replication, view = (int(p[1:]) for p in name.split("_"))
        assert (s.index["subject"][i], s.index["view"][i], s.index["replication"][i]) == \
            (subject, view, replication)


def _copy_some(shared_data, tmp_path, n=12):
    src = sorted((shared_data / "nw_ucla" / "all_sqe").glob("*.json"))[::120][:n]
    if not src:
        pytest.skip("NW-UCLA not found")
    raw = tmp_path / "all_sqe"
    raw.mkdir()
    for p in src:
        shutil.copy(p, raw / p.name)
    return raw, [p.name for p in src]


def _corrupt(raw, names):
    """Break copies in every way the reader must handle; return {file name: expected reason fragment}."""
    def edit(name, fn):
        data = json.loads((raw / name).read_text())
        fn(data)
        (raw / name).write_text(json.dumps(data))

    (raw / names[0]).write_text('{"file_name": "x", "skel')  # truncated JSON
    (raw / names[1]).write_bytes(b"\xff\xfe\x00garbage")
    edit(names[2], lambda d: d.pop("skeletons"))
    edit(names[3], lambda d: d.update(label=d["label"] % 10 + 1))
    edit(names[4], lambda d: d["skeletons"][0][3].pop())  # ragged
    edit(names[5], lambda d: d.update(skeletons=[[r[:2] for r in f] for f in d["skeletons"]]))  # T x 20 x 2
    edit(names[6], lambda d: d["skeletons"][0][0].__setitem__(1, "x"))
    edit(names[7], lambda d: [f.append([0.0, 0.0, 0.0]) for f in d["skeletons"]])  # T x 21 x 3
    edit(names[8], lambda d: d.update(skeletons=[]))
    (raw / "a07_s01_e00_v01.json").write_text("{}")
    (raw / "notes.json").write_text("{}")
    return {names[0]: "unreadable JSON", names[1]: "unreadable JSON", names[2]: "missing key",
            names[3]: "disagrees", names[4]: "regular", names[5]: "shape", names[6]: "non-numeric",
            names[7]: "shape", names[8]: "shape", "a07_s01_e00_v01.json": "action a07",
            "notes.json": "file name"}


def test_corrupt_files_skipped(shared_data, tmp_path):
    raw, names = _copy_some(shared_data, tmp_path)
    expected = _corrupt(raw, names)
    data = json.loads((raw / names[9]).read_text())
    data["skeletons"][-1][4][2] = float("inf")
    (raw / names[9]).write_text(json.dumps(data))  # writes Infinity, which Python's json reads back
    expected[names[9]] = "NaN or infinite"
    summary = prepare_ucla(tmp_path, out=tmp_path / "store")
    skipped = {s["name"]: s["reason"] for s in summary["skipped"]}
    assert skipped.keys() == expected.keys()
    for name, fragment in expected.items():
        assert fragment in skipped[name], (name, skipped[name])
    assert summary["num_samples"] == len(names) - 10
    assert SkeletonStore(tmp_path / "store").summary()["skipped"] == summary["skipped"]


def test_nan_and_strict(shared_data, tmp_path):
    raw, names = _copy_some(shared_data, tmp_path, n=3)
    data = json.loads((raw / names[1]).read_text())
    data["skeletons"].append([[float("nan")] * 3] * 20)
    (raw / names[1]).write_text(json.dumps(data))
    summary = prepare_ucla(raw, out=tmp_path / "a")
    assert [s["name"] for s in summary["skipped"]] == [names[1]]
    assert "NaN" in summary["skipped"][0]["reason"]
    with pytest.raises(SkelactError, match=names[1]):
        prepare_ucla(raw, out=tmp_path / "b", strict=True)
    assert not (tmp_path / "b").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "all_sqe"]  # no temp dirs left


def test_no_input(tmp_path):
    with pytest.raises(SkelactError, match="no .json"):
        prepare_ucla(tmp_path, out=tmp_path / "s")
    with pytest.raises(SkelactError, match="not a directory"):
        prepare_ucla(tmp_path / "missing", out=tmp_path / "s")
    (tmp_path / "a01_s01_e00_v01.json").write_text("[]")
    with pytest.raises(SkelactError, match="no usable clips.*not an object"):
        prepare_ucla(tmp_path, out=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "skelact", *map(str, args)], capture_output=True, text=True)


def test_cli(shared_data, tmp_path):
    raw, names = _copy_some(shared_data, tmp_path, n=6)
    (raw / names[2]).write_text("not json")
    r = _cli("prepare", "ucla", "--raw", raw, "--out", tmp_path / "s")
    assert r.returncode == 0, r.stderr
    assert "wrote 5 clips" in r.stdout and names[2] in r.stdout
    r = _cli("info", tmp_path / "s", "--json")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 1
    info = json.loads(r.stdout)
    assert info["num_samples"] == 5 and info["num_classes"] == 10 and info["layout"] == "ucla20"
    assert set(info["splits"]) == {"xview", "xsub"}
    assert [s["name"] for s in info["skipped"]] == [names[2]]
    r = _cli("prepare", "ucla", "--raw", raw, "--out", tmp_path / "s2", "--strict")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and names[2] in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "s2").exists()
    r = _cli("prepare", "ucla", "--raw", raw, "--out", tmp_path / "s")  # exists, no --overwrite
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert _cli("prepare", "ucla", "--raw", raw, "--out", tmp_path / "s", "--overwrite",
                "--dtype", "float16").returncode == 0
    assert SkeletonStore(tmp_path / "s").meta["dtype"] == "float16"
