import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from skelact.data.importers import default_splits, import_arrays, import_pyskl, write_arrays
from skelact.data.store import SkeletonStore
from skelact.errors import SkelactError


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "skelact", *map(str, args)], capture_output=True, text=True)


def _csv(path, rows, header="name,label,subject,view,split"):
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


@pytest.fixture
def arrays(tmp_path):
    """Eight good NTU-layout clips as .npy files (one with 2 persons, one of 1 frame) and a labels CSV."""
    rng = np.random.default_rng(0)
    clips = {f"clip{i}": rng.normal(size=(1 + 5 * i, 25, 3)).astype(np.float32) for i in range(7)}
    clips["pair"] = rng.normal(size=(2, 9, 25, 3))
    folder = tmp_path / "clips"
    folder.mkdir()
    for name, x in clips.items():
        np.save(folder / f"{name}.npy", x)
    actions = ["wave", "clap", "jump"]
    rows = [(name, actions[i % 3], i % 4 + 1, i % 2 + 1, "test" if i % 4 == 3 else "train")
            for i, name in enumerate(clips)]
    return folder, clips, _csv(tmp_path / "labels.csv", rows), rows


def test_arrays_folder_with_class_name_labels(arrays, tmp_path):
    folder, clips, labels, rows = arrays
    summary = import_arrays(folder, layout="ntu25", labels=labels, out=tmp_path / "s")
    assert summary["num_samples"] == 8 and summary["skipped"] == [] and summary["out"] == str(tmp_path / "s")
    s = SkeletonStore(tmp_path / "s")
    assert s.class_names == ["clap", "jump", "wave"] and s.max_persons == 2 and s.layout.name == "ntu25"
    by_name = {r[0]: r for r in rows}
    for i, name in enumerate(s.names):
        x = clips[name]
        x = x if x.ndim == 4 else x[None]
        np.testing.assert_allclose(s.clip(i)[:x.shape[0]], x, rtol=1e-6)
        _, action, subject, view, split = by_name[name]
        assert s.class_names[s.labels[i]] == action
        assert (s.index["subject"][i], s.index["view"][i], s.index["split"][i]) == (subject, view, split)
    assert s.meta["splits"]["default"] == {"column": "split", "train": ["train"], "test": ["test"]}
    assert s.meta["splits"]["xsub"] == {"column": "subject", "train": [1, 2]}
    assert s.meta["splits"]["xview"] == {"column": "view", "train": [1]}
    assert summary["splits"]["default"] == {"train": 6, "test": 2}
    assert s.index["length"].min() == 1


def test_npz_with_int_labels_and_class_file(tmp_path):
    rng = np.random.default_rng(1)
    clips = {f"k{i}": rng.normal(size=(4 + i, 17, 3)) for i in range(5)}
    np.savez_compressed(tmp_path / "clips.npz", **clips)
    labels = _csv(tmp_path / "l.csv", [(f"k{i}", i % 2) for i in range(5)], header="name,label")
    (tmp_path / "classes.txt").write_text("sit\nstand\nlie\n")
    summary = import_arrays(tmp_path / "clips.npz", layout="coco17", labels=labels,
                            class_names=tmp_path / "classes.txt", out=tmp_path / "s", dtype="float16")
    s = SkeletonStore(tmp_path / "s")
    assert summary["num_samples"] == 5 and s.class_names == ["sit", "stand", "lie"]
    assert s.meta["dtype"] == "float16" and summary["splits"] == {}
    np.testing.assert_array_equal(s.labels, [0, 1, 0, 1, 0])
    np.testing.assert_allclose(s.clip(3)[0], clips["k3"], atol=5e-3)
    # without a names file, integer labels get generic names
    import_arrays(tmp_path / "clips.npz", layout="coco17", labels=labels, out=tmp_path / "t")
    assert SkeletonStore(tmp_path / "t").class_names == ["class_0", "class_1"]


def test_bad_arrays_skipped_or_fatal(arrays, tmp_path):
    folder, clips, labels, rows = arrays
    rng = np.random.default_rng(2)
    np.save(folder / "joints24.npy", rng.normal(size=(5, 24, 3)))
    nan = rng.normal(size=(5, 25, 3))
    nan[1, 2, 0] = np.nan
    np.save(folder / "nan.npy", nan)
    np.save(folder / "text.npy", np.full((5, 25, 3), "a"))
    np.save(folder / "persons3.npy", rng.normal(size=(3, 5, 25, 3)).astype(np.float32)[:, :, :, :2])
    (folder / "junk.npy").write_bytes(b"not an array")
    np.save(folder / "unlabelled.npy", rng.normal(size=(5, 25, 3)))
    extra = [("joints24", "wave"), ("nan", "wave"), ("text", "clap"), ("persons3", "jump"),
             ("junk", "wave"), ("ghost", "clap")]
    _csv(labels, [r[:2] for r in rows] + extra, header="name,label")
    summary = import_arrays(folder, layout="ntu25", labels=labels, out=tmp_path / "s")
    reasons = {s["name"]: s["reason"] for s in summary["skipped"]}
    assert summary["num_samples"] == 8
    expected = {"joints24": "24 joints", "nan": "NaN", "text": "non-numeric", "persons3": "channels",
                "junk": "not a .npy", "unlabelled": "no label", "ghost": "no array"}
    assert reasons.keys() == expected.keys()
    for name, fragment in expected.items():
        assert fragment in reasons[name], (name, reasons[name])
    with pytest.raises(SkelactError, match=r"joints24\.npy: 24 joints"):
        import_arrays(folder, layout="ntu25", labels=labels, out=tmp_path / "t", strict=True)
    assert not (tmp_path / "t").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips", "labels.csv", "s"]


def test_labels_csv_problems(arrays, tmp_path):
    folder, _, labels, rows = arrays
    cases = {
        "name,action\nclip0,wave\n": "columns name,label",
        "name,label\nclip0,wave\nclip0,clap\n": "line 3: duplicate name 'clip0'",
        "name,label,subject\nclip0,wave,P01\n": "line 2: subject must be an integer",
        "name,label\nclip0,\n": "line 2: empty label",
        "name,label\nclip0,wave,extra\n": "line 2: more fields",
    }
    for text, message in cases.items():
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(SkelactError, match=message):
            import_arrays(folder, layout="ntu25", labels=tmp_path / "bad.csv", out=tmp_path / "s")
    with pytest.raises(SkelactError, match="--labels"):
        import_arrays(folder, layout="ntu25", out=tmp_path / "s")
    with pytest.raises(SkelactError, match="--layout is required"):
        import_arrays(folder, layout=None, labels=labels, out=tmp_path / "s")
    with pytest.raises(SkelactError, match="unknown layout"):
        import_arrays(folder, layout="body25", labels=labels, out=tmp_path / "s")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SkelactError, match="no .npy files"):
        import_arrays(tmp_path / "empty", layout="ntu25", labels=labels, out=tmp_path / "s")
    with pytest.raises(SkelactError, match="does not exist"):
        import_arrays(tmp_path / "missing", layout="ntu25", labels=labels, out=tmp_path / "s")
    # a label that is not in the class names file: skipped; nothing usable at all: one clear error
    (tmp_path / "classes.txt").write_text("wave\nclap\n")
    summary = import_arrays(folder, layout="ntu25", labels=labels, class_names=tmp_path / "classes.txt",
                            out=tmp_path / "s")
    assert {s["name"] for s in summary["skipped"]} == {r[0] for r in rows if r[1] == "jump"}
    with pytest.raises(SkelactError, match="no usable clips.*ucla20 has 20"):
        import_arrays(folder, layout="ucla20", labels=labels, out=tmp_path / "u")


def test_write_arrays_in_memory(tmp_path):
    rng = np.random.default_rng(3)
    clips = {f"c{i}": rng.normal(size=(3 + i, 20, 3)) for i in range(6)}
    labels = {name: ["a", "b"][i % 2] for i, name in enumerate(clips)}
    meta = {name: {"subject": i // 2, "fold": "x" if i < 3 else "y"} for i, name in enumerate(clips)}
    summary = write_arrays(tmp_path / "s", clips, labels, layout="ucla20", metadata=meta,
                           splits={"folds": {"column": "fold", "train": ["x"]}})
    s = SkeletonStore(tmp_path / "s")
    assert summary["splits"] == {"folds": {"train": 3, "test": 3}}
    assert list(s.index["fold"]) == ["x", "x", "x", "y", "y", "y"]
    assert s.max_persons == 1 and s.class_names == ["a", "b"]
    np.testing.assert_allclose(s.clip(5)[0], clips["c5"], rtol=1e-6)
    # lazy values and default splits from the metadata
    write_arrays(tmp_path / "t", [(n, (lambda x=x: x)) for n, x in clips.items()], labels, layout="ucla20",
                 metadata=meta)
    assert SkeletonStore(tmp_path / "t").meta["splits"] == {"xsub": {"column": "subject", "train": [0, 1]}}


def test_default_splits():
    assert default_splits({}) == {}
    meta = {"a": {"split": "train", "subject": 3, "view": 2}, "b": {"split": "val", "subject": 1, "view": 1},
            "c": {"subject": 7, "view": 2}, "d": {"subject": 5}}
    assert default_splits(meta) == {
        "default": {"column": "split", "train": ["train"], "test": ["val"]},  # "val" when no "test"
        "xsub": {"column": "subject", "train": [1, 3]},
        "xview": {"column": "view", "train": [1]},
    }
    meta["c"]["split"] = "test"
    assert default_splits(meta)["default"]["test"] == ["test"]
    assert "xview" not in default_splits({"a": {"view": 1}, "b": {"view": 1}})


# ---- pyskl ----------------------------------------------------------------------------------------

def _pyskl_3d(rng, n=10):
    anns = [{"frame_dir": f"S001C001P00{i % 4 + 1}R001A00{i % 5 + 1}", "label": i % 5,
             "keypoint": rng.normal(size=(1 + i % 2, 3 + i, 25, 3)).astype(np.float32),
             "total_frames": 3 + i} for i in range(n)]
    names = [a["frame_dir"] for a in anns]
    split = {"xsub_train": names[:6], "xsub_val": names[6:], "xview_train": names[::2],
             "xview_val": names[1::2], "weird": names[:2]}
    return {"split": split, "annotations": anns}


def test_pyskl_refused_without_trust(tmp_path):
    marker = tmp_path / "ran"

    class Payload:  # unpickling this would create the marker file
        def __reduce__(self):
            return open, (str(marker), "w")

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"annotations": [Payload()]}))
    with pytest.raises(SkelactError, match="--trust-pickle"):
        import_pyskl(tmp_path / "evil.pkl", out=tmp_path / "s")
    r = _cli("import", "pyskl", tmp_path / "evil.pkl", "--out", tmp_path / "s")
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "--trust-pickle" in r.stderr
    assert not marker.exists() and not (tmp_path / "s").exists()


def test_pyskl_round_trip_3d(tmp_path):
    rng = np.random.default_rng(4)
    data = _pyskl_3d(rng)
    data["annotations"].append({"frame_dir": "short_of_joints", "label": 1,
                                "keypoint": np.zeros((1, 4, 24, 3))})
    data["annotations"].append({"frame_dir": "no_label", "keypoint": np.zeros((1, 4, 25, 3))})
    (tmp_path / "a.pkl").write_bytes(pickle.dumps(data))
    summary = import_pyskl(tmp_path / "a.pkl", trust_pickle=True, out=tmp_path / "s")
    s = SkeletonStore(tmp_path / "s")
    assert s.layout.name == "ntu25" and s.max_persons == 2 and s.num_classes == 5
    assert summary["num_samples"] == 10
    assert {x["name"] for x in summary["skipped"]} == {"short_of_joints", "no_label"}
    assert summary["splits"] == {"xsub": {"train": 6, "test": 4}, "xview": {"train": 5, "test": 5}}
    assert s.meta["splits"]["xsub"] == {"column": "split_xsub", "train": ["train"], "test": ["val"]}
    names = list(s.names)
    for ann in data["annotations"][:10]:
        i = names.index(ann["frame_dir"])
        kp = ann["keypoint"]
        np.testing.assert_array_equal(s.clip(i)[:kp.shape[0]], kp)
        assert s.labels[i] == ann["label"]
    train = {names[i] for i in s.split("xsub", "train")}
    assert train == set(data["split"]["xsub_train"])
    with pytest.raises(SkelactError, match=r"a\.pkl\[short_of_joints\]: 24 joints"):
        import_pyskl(tmp_path / "a.pkl", trust_pickle=True, out=tmp_path / "t", strict=True)
    assert not (tmp_path / "t").exists()


def test_pyskl_2d_coco_with_scores(tmp_path):
    rng = np.random.default_rng(5)
    anns = [{"frame_dir": f"v{i}", "label": i % 3, "img_shape": (480, 640), "total_frames": 5 + i,
             "keypoint": (rng.uniform(size=(1 + i % 3, 5 + i, 17, 2)) * 600).astype(np.float16),
             "keypoint_score": rng.uniform(size=(1 + i % 3, 5 + i, 17)).astype(np.float16)}
            for i in range(6)]
    data = {"split": {"train": ["v0", "v1", "v2", "v3"], "test": ["v4", "v5"]}, "annotations": anns}
    (tmp_path / "k.pkl").write_bytes(pickle.dumps(data))
    r = _cli("import", "pyskl", tmp_path / "k.pkl", "--trust-pickle", "--out", tmp_path / "s")
    assert r.returncode == 0, r.stderr
    info = json.loads(_cli("info", tmp_path / "s", "--json").stdout)
    assert info["layout"] == "coco17" and info["max_persons"] == 3 and info["num_samples"] == 6
    assert info["splits"] == {"default": {"train": 4, "test": 2}}
    s = SkeletonStore(tmp_path / "s")
    for i, ann in enumerate(anns):
        m = ann["keypoint"].shape[0]
        want = np.concatenate([ann["keypoint"], ann["keypoint_score"][..., None]], -1).astype(np.float32)
        np.testing.assert_array_equal(s.clip(i)[:m], want)


def test_pyskl_layout_inference_errors(tmp_path):
    def dump(v, c, **kw):
        ann = {"frame_dir": "x", "label": 0, "keypoint": np.zeros((1, 3, v, c)), **kw}
        (tmp_path / "p.pkl").write_bytes(pickle.dumps({"annotations": [ann]}))
        return tmp_path / "p.pkl"

    with pytest.raises(SkelactError, match="no known layout has 25 joints with 2-D"):
        import_pyskl(dump(25, 2), trust_pickle=True, out=tmp_path / "s")  # OpenPose BODY-25 is not ntu25
    with pytest.raises(SkelactError, match="no known layout has 19 joints"):
        import_pyskl(dump(19, 3), trust_pickle=True, out=tmp_path / "s")
    # explicit --layout overrides inference; 18 joints 2-D without scores get a score of 1
    import_pyskl(dump(18, 2), trust_pickle=True, layout="openpose18", out=tmp_path / "s")
    assert (SkeletonStore(tmp_path / "s").clip(0)[..., 2] == 1).all()
    (tmp_path / "p.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(SkelactError, match="not a pyskl annotation file"):
        import_pyskl(tmp_path / "p.pkl", trust_pickle=True, out=tmp_path / "t")
    (tmp_path / "p.pkl").write_bytes(b"\x80\x05garbage")
    with pytest.raises(SkelactError, match="cannot load pickle"):
        import_pyskl(tmp_path / "p.pkl", trust_pickle=True, out=tmp_path / "t")


def test_cli_import_arrays(arrays, tmp_path):
    folder, _, labels, _ = arrays
    r = _cli("import", "arrays", folder, "--layout", "ntu25", "--labels", labels, "--out", tmp_path / "s")
    assert r.returncode == 0, r.stderr
    assert "wrote 8 clips" in r.stdout and "split default: train 6, test 2" in r.stdout
    info = json.loads(_cli("info", tmp_path / "s", "--json").stdout)
    assert info["num_samples"] == 8 and info["num_classes"] == 3 and set(info["splits"]) == \
        {"default", "xsub", "xview"}
    r = _cli("import", "arrays", folder, "--labels", labels, "--out", tmp_path / "t")
    assert r.returncode == 2 and "--layout is required" in r.stderr and r.stderr.count("\n") == 1
