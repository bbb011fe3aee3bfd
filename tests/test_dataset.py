import json
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from skelact.data.dataset import SkeletonDataset
from skelact.data.store import SkeletonStore, StoreWriter
from skelact.errors import SkelactError

LENGTHS = [1, 3, 20, 64, 80, 150, 40, 7]


@pytest.fixture(scope="module")
def ntu_store(tmp_path_factory):
    """A random ntu25 store with 2 persons max: 8 clips of varied length, subjects 1..4."""
    out = tmp_path_factory.mktemp("stores") / "ntu"
    rng = np.random.default_rng(0)
    with StoreWriter(out, dataset="toy", layout="ntu25", class_names=["a", "b", "c"], max_persons=2,
                     splits={"xsub": {"column": "subject", "train": [1, 2]}}) as w:
        for i, t in enumerate(LENGTHS):
            m = 1 + i % 2
            w.add(f"clip{i}", rng.normal(size=(m, t, 25, 3)), label=i % 3, subject=1 + i % 4)
        w.commit()
    return SkeletonStore(out)


@pytest.fixture(scope="module")
def ucla_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "ucla"
    rng = np.random.default_rng(1)
    with StoreWriter(out, dataset="toy", layout="ucla20", class_names=list("abcdefghij"),
                     max_persons=1) as w:
        for i, t in enumerate(LENGTHS):
            w.add(f"clip{i}", rng.normal(size=(t, 20, 3)), label=i % 10, view=1 + i % 3)
        w.add("flat", np.full((4, 20, 3), 0.5), label=0)  # degenerate: every coordinate equal
        w.commit()
    return SkeletonStore(out)


@pytest.mark.parametrize("stream", ["j", "b", "jm", "bm"])
@pytest.mark.parametrize("protocol,window", [("ntu", 64), ("none", 64), ("ucla", 52)])
@pytest.mark.parametrize("train", [True, False])
def test_shapes_and_streams(ntu_store, protocol, window, stream, train):
    ds = SkeletonDataset(ntu_store, protocol=protocol, window=window, stream=stream, train=train)
    assert len(ds) == len(LENGTHS) and ds.in_channels == 3 and ds.num_classes == 3
    for i in range(len(ds)):
        x, label, index = ds[i]
        assert x.dtype == torch.float32 and x.shape == (3, window, 25, 2)
        assert torch.isfinite(x).all()
        assert label == ds.labels[i] == ntu_store.labels[index] and index == ds.sample_indices[i] == i
        if protocol == "ucla":  # one person: the second is zero
            assert not x[..., 1].any()
        if stream in ("b", "bm"):
            assert not x[:, :, ds.layout.center].any()
        if stream in ("jm", "bm"):
            assert not x[:, -1].any()


def test_persons_split_indices_repeat(ntu_store):
    ds = SkeletonDataset(ntu_store, num_persons=1, window=16)
    assert ds[1][0].shape == (3, 16, 25, 1)
    ds3 = SkeletonDataset(ntu_store, num_persons=3, window=16, train=False)
    assert ds3[1][0].shape == (3, 16, 25, 3) and not ds3[1][0][..., 2].any()
    ds = SkeletonDataset(ntu_store, split="xsub", part="test", repeat=3)
    expect = ntu_store.split("xsub", "test")
    assert len(ds) == 3 * len(expect)
    np.testing.assert_array_equal(ds.sample_indices, np.tile(expect, 3))
    assert [ds[i][2] for i in range(len(ds))] == list(np.tile(expect, 3))
    np.testing.assert_array_equal(ds.labels, ntu_store.labels[ds.sample_indices])
    # repeated positions are separate draws
    assert not torch.equal(ds[0][0], ds[len(expect)][0])
    ds = SkeletonDataset(ntu_store.path, indices=[5, 2])
    assert [ds[0][2], ds[1][2]] == [5, 2] and ds.class_names == ["a", "b", "c"]


def test_determinism(ntu_store):
    make = lambda **kw: SkeletonDataset(ntu_store, **kw)  # noqa: E731
    a, b = make(seed=1), make(seed=1)
    b.set_epoch(0)
    for i in range(len(a)):
        assert torch.equal(a[i][0], b[i][0])
    a.set_epoch(1)
    assert all(not torch.equal(a[i][0], b[i][0]) for i in range(2, len(a)))
    b.set_epoch(1)
    assert torch.equal(a[4][0], b[4][0])
    assert not torch.equal(make(seed=2)[4][0], make(seed=1)[4][0])
    t = make(train=False)
    first = t[5][0]
    t.set_epoch(7)
    assert torch.equal(t[5][0], first) and torch.equal(make(train=False, seed=9)[5][0], first)


def _collect(ds, workers):
    loader = DataLoader(ds, batch_size=3, shuffle=False, num_workers=workers)
    xs, idx = zip(*[(x, i) for x, _, i in loader])
    return torch.cat(xs), torch.cat(idx)


@pytest.mark.parametrize("protocol", ["ntu", "ucla"])
def test_dataloader_workers_do_not_change_samples(ntu_store, protocol):
    ds = SkeletonDataset(ntu_store, protocol=protocol, window=32, stream="b", seed=3)
    ds.set_epoch(2)
    x0, i0 = _collect(ds, 0)
    x2, i2 = _collect(ds, 2)
    assert torch.equal(x0, x2) and torch.equal(i0, i2)


def test_set_epoch_reaches_persistent_workers(ntu_store):
    ds = SkeletonDataset(ntu_store, protocol="ucla", window=16, seed=5)
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True)
    got = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        got.append(torch.cat([x for x, _, _ in loader]))
    assert not torch.equal(got[0], got[1])
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        assert torch.equal(got[epoch], torch.stack([ds[i][0] for i in range(len(ds))]))


def test_pickle_reopens_store(ntu_store):
    ds = SkeletonDataset(ntu_store, window=16, seed=4)
    ds.set_epoch(3)
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000  # the frames do not travel
    copy = pickle.loads(blob)
    assert torch.equal(copy[6][0], ds[6][0])


def test_ucla_protocol(ucla_store):
    for train in (True, False):
        ds = SkeletonDataset(ucla_store, protocol="ucla", window=52, train=train)
        for i in range(len(ds)):
            x = ds[i][0]
            assert x.shape == (3, 52, 20, 1) and torch.isfinite(x).all()
            assert x.min() >= -1 - 1e-6 and x.max() <= 1 + 1e-6
        assert not ds[len(ds) - 1][0].any()  # the flat clip normalises to zeros


def test_errors(ntu_store, tmp_path):
    with pytest.raises(SkelactError, match="unknown stream"):
        SkeletonDataset(ntu_store, stream="x")
    with pytest.raises(SkelactError, match="protocol"):
        SkeletonDataset(ntu_store, protocol="w64")
    with pytest.raises(SkelactError, match="no split 'xview'"):
        SkeletonDataset(ntu_store, split="xview")
    with pytest.raises(SkelactError, match="part"):
        SkeletonDataset(ntu_store, split="xsub", part="val")
    with pytest.raises(SkelactError, match="either split or indices"):
        SkeletonDataset(ntu_store, split="xsub", indices=[0])
    with pytest.raises(SkelactError, match="indices outside"):
        SkeletonDataset(ntu_store, indices=[0, 99])
    with pytest.raises(SkelactError, match="indices"):
        SkeletonDataset(ntu_store, indices=[])
    with pytest.raises(SkelactError, match="window"):
        SkeletonDataset(ntu_store, window=0)
    with pytest.raises(SkelactError, match="num_persons"):
        SkeletonDataset(ntu_store, num_persons=0)
    with pytest.raises(SkelactError, match="augment"):
        SkeletonDataset(ntu_store, augment={"rotate_deg": 30})
    with pytest.raises(SkelactError, match="not a skelact dataset"):
        SkeletonDataset(tmp_path)
    # a store whose joint count disagrees with its layout cannot give bones
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("index.npz", "frames.bin"):
        (bad / f).write_bytes((ntu_store.path / f).read_bytes())
    meta = dict(ntu_store.meta, num_joints=5)
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SkelactError, match="bone tree"):
        SkeletonDataset(bad, stream="b")


def test_real_nw_ucla(shared_data, tmp_path):
    files = sorted((shared_data / "nw_ucla" / "all_sqe").glob("*.json"))
    if not files:
        pytest.skip("no NW-UCLA json files")
    # the two 1-frame clips, a 6-frame clip, the longest clip and a few ordinary ones
    names = ["a02_s09_e04_v02", "a02_s09_e04_v03", "a01_s10_e00_v03", "a01_s08_e02_v01"]
    picked = [f for f in files if f.stem in names] + files[:6]
    with StoreWriter(tmp_path / "ucla", dataset="nw_ucla", layout="ucla20",
                     class_names=[str(i) for i in range(10)], max_persons=1,
                     splits={"xview": {"column": "view", "train": [1, 2]}}) as w:
        for f in picked:
            d = json.loads(f.read_text())
            w.add(f.stem, np.asarray(d["skeletons"], dtype=np.float32), int(d["label"]) - 1,
                  view=int(f.stem.split("_v")[1]), subject=int(f.stem.split("_s")[1][:2]))
        store = w.commit()
    for train in (True, False):
        for stream in ("j", "bm"):
            ds = SkeletonDataset(store, protocol="ucla", window=52, train=train, stream=stream)
            for i in range(len(ds)):
                x, label, _ = ds[i]
                assert x.shape == (3, 52, 20, 1) and torch.isfinite(x).all() and 0 <= label < 10
                if stream == "j":
                    assert x.abs().max() <= 1 + 1e-6
    train = SkeletonDataset(store, split="xview", part="train", protocol="ucla", window=52)
    assert set(SkeletonStore(store).index["view"][train.sample_indices]) <= {1, 2}


def test_2d_layouts_get_no_3d_geometry(tmp_path):
    """coco17 stores (x, y, score): default train augmentation skips 3-D rotation / bone scaling
    (which would mix the score into the coordinates); asking for them explicitly is an error."""
    rng = np.random.default_rng(0)
    with StoreWriter(tmp_path / "coco", dataset="t", layout="coco17", class_names=["a", "b"],
                     max_persons=1, splits={"s": {"column": "subject", "train": [1]}}) as w:
        for i in range(4):
            w.add(f"c{i}", rng.random((20, 17, 3)), i % 2, subject=1 + i % 2)
        w.commit()
    train = SkeletonDataset(tmp_path / "coco", split="s", protocol="ntu", window=16, train=True)
    plain = SkeletonDataset(tmp_path / "coco", split="s", protocol="ntu", window=16, train=True,
                            augment=False)
    assert train.augment == {}
    torch.testing.assert_close(train[0][0], plain[0][0])  # same crop, no geometry on (x, y, score)
    with pytest.raises(SkelactError, match="2-D"):
        SkeletonDataset(tmp_path / "coco", split="s", protocol="ntu", train=True,
                        augment={"rotate": 0.3})
