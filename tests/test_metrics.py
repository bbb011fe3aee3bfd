import json
import sys

import numpy as np
import pytest

from skelact import metrics
from skelact.errors import SkelactError
from skelact.report import build_report, load_scores, save_scores, write_report


def slow_topk(scores, labels, k):
    hits = 0
    for s, y in zip(scores, labels):
        order = sorted(range(len(s)), key=lambda c: (-s[c], c))  # stable descending
        hits += y in order[:k]
    return 100.0 * hits / len(labels)


@pytest.mark.parametrize("ties", [False, True])
def test_topk_matches_loop(ties):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(200, 7)).astype(np.float32)
    if ties:
        scores = np.round(scores)  # many equal scores
    labels = rng.integers(0, 7, 200)
    for k in (1, 2, 5, 7, 10):
        assert metrics.topk_accuracy(scores, labels, k) == pytest.approx(slow_topk(scores, labels, k))
    assert metrics.topk_accuracy(scores, labels, 1) == pytest.approx(
        100.0 * np.mean(scores.argmax(1) == labels))


def test_confusion_per_class_and_pairs_match_loops():
    rng = np.random.default_rng(1)
    k = 6
    labels = rng.integers(0, k - 1, 300)  # class k-1 never occurs
    preds = np.where(rng.random(300) < 0.6, labels, rng.integers(0, k, 300))
    cm = metrics.confusion_matrix(labels, preds, k)
    slow = np.zeros((k, k), dtype=np.int64)
    for y, p in zip(labels, preds):
        slow[y, p] += 1
    assert np.array_equal(cm, slow)

    acc, support = metrics.per_class_accuracy(cm)
    for c in range(k):
        idx = [i for i in range(300) if labels[i] == c]
        assert support[c] == len(idx)
        if idx:
            assert acc[c] == pytest.approx(100.0 * sum(preds[i] == c for i in idx) / len(idx))
        else:
            assert np.isnan(acc[c])

    cells = [(t, p, slow[t, p], 100.0 * slow[t, p] / slow[t].sum())
             for t in range(k) for p in range(k) if t != p and slow[t, p] > 0]
    cells.sort(key=lambda x: (-x[2], -x[3], x[0], x[1]))
    got = metrics.confused_pairs(cm, top=8)
    assert [(t, p, n) for t, p, n, _ in got] == [(t, p, n) for t, p, n, _ in cells[:8]]
    assert [r for *_, r in got] == pytest.approx([r for *_, r in cells[:8]])


def test_confused_pairs_directed():
    cm = np.array([[5, 3, 0], [1, 6, 0], [0, 0, 4]])
    assert metrics.confused_pairs(cm) == [(0, 1, 3, 37.5), (1, 0, 1, pytest.approx(100 / 7))]


# ------------------------------------------------------------------------------------ load_scores
def fake_scores(n=20, k=4, seed=0):
    rng = np.random.default_rng(seed)
    return dict(names=np.array([f"S{i:03d}" for i in range(n)]), labels=rng.integers(0, k, n),
                scores=rng.normal(size=(n, k)).astype(np.float32),
                class_names=np.array([f"class{c}" for c in range(k)]))


def test_load_scores_dir_and_file(tmp_path):
    d = fake_scores()
    save_scores(tmp_path / "scores.npz", **d)
    (tmp_path / "summary.json").write_text(json.dumps({"top1": 1.0, "stream": "j"}))
    for target in (tmp_path, tmp_path / "scores.npz"):
        got = load_scores(target)
        assert np.array_equal(got["names"], d["names"]) and got["labels"].dtype == np.int64
        assert got["scores"].shape == (20, 4) and got["summary"]["stream"] == "j"


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("labels"), "missing key(s) labels"),
    (lambda d: d.update(scores=np.where(np.eye(20, 4) > 0, np.nan, d["scores"])), "NaN/inf"),
    (lambda d: d.update(labels=d["labels"][:-1]), "labels has shape (19,)"),
    (lambda d: d.update(class_names=d["class_names"][:3]), "class_names has shape (3,)"),
    (lambda d: d.update(scores=d["scores"][0]), "(N, K)"),
    (lambda d: d.update(labels=d["labels"] + 10), "outside [0, 4)"),
    (lambda d: d.update(labels=d["labels"].astype(float)), "must be integers"),
    (lambda d: d.update(names=np.array(["a"] * 20)), "duplicated sample id"),
])
def test_load_scores_errors(tmp_path, change, message):
    d = fake_scores()
    change(d)
    np.savez(tmp_path / "scores.npz", **d)
    with pytest.raises(SkelactError, match="scores.npz") as e:
        load_scores(tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_load_scores_missing_and_corrupt(tmp_path):
    with pytest.raises(SkelactError, match="no such run"):
        load_scores(tmp_path / "nope")
    with pytest.raises(SkelactError, match="no scores.npz"):
        load_scores(tmp_path)
    with pytest.raises(SkelactError, match="no val_scores.npz"):
        load_scores(tmp_path, "val_scores")
    (tmp_path / "scores.npz").write_bytes(b"garbage")
    with pytest.raises(SkelactError, match="not a readable"):
        load_scores(tmp_path)
    d = fake_scores()
    d["names"] = d["names"].astype(object)
    np.savez(tmp_path / "scores.npz", **d)
    with pytest.raises(SkelactError, match="object arrays"):
        load_scores(tmp_path)


# ------------------------------------------------------------------------------------------ report
def test_build_and_write_report(tmp_path):
    d = fake_scores(n=60, k=5, seed=3)
    rep = build_report(d["scores"], d["labels"], d["class_names"], names=d["names"], top=4)
    assert rep["top1"] == pytest.approx(metrics.topk_accuracy(d["scores"], d["labels"], 1))
    assert rep["top5"] == 100.0
    assert sum(c["support"] for c in rep["per_class"]) == 60
    assert np.array(rep["confusion"]).sum() == 60 and len(rep["confused_pairs"]) == 4
    p = rep["confused_pairs"][0]
    for name in p["examples"]:
        i = list(d["names"]).index(name)
        assert d["labels"][i] == p["true_index"] and d["scores"][i].argmax() == p["predicted_index"]
        assert p["true"] == d["class_names"][p["true_index"]]
        assert p["predicted"] == d["class_names"][p["predicted_index"]]

    written = write_report(tmp_path / "out", rep, title="Test")
    names = {p.name for p in written}
    assert {"report.json", "report.md", "confusion.csv"} <= names
    assert json.loads((tmp_path / "out" / "report.json").read_text())["top1"] == rep["top1"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"top-1: {rep['top1']:.2f} %" in md and "Most confused pairs" in md
    accs = [c["accuracy"] for c in sorted(rep["per_class"], key=lambda c: c["accuracy"])]
    table = [ln for ln in md.splitlines() if ln.startswith("| class") and "accuracy" not in ln]
    assert table[0].split("|")[2].strip() == f"{accs[0]:.2f}"  # worst class first
    csv = (tmp_path / "out" / "confusion.csv").read_text().splitlines()
    assert csv[0] == "true \\ predicted,class0,class1,class2,class3,class4" and len(csv) == 6
    assert not list((tmp_path / "out").glob("*.tmp"))
    try:
        import matplotlib  # noqa: F401
        assert (tmp_path / "out" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    except ImportError:
        pass


def test_report_class_summaries_match_loops():
    """mean class accuracy and each class's most-confused class, against explicit loops."""
    d = fake_scores(n=200, k=7, seed=11)
    rep = build_report(d["scores"], d["labels"], d["class_names"])
    preds = [int(np.argmax(s)) for s in d["scores"]]
    accs = []
    for c in range(7):
        mine = [i for i, y in enumerate(d["labels"]) if y == c]
        if mine:
            accs.append(100.0 * sum(preds[i] == c for i in mine) / len(mine))
        wrong = [preds[i] for i in mine if preds[i] != c]
        if wrong:  # the most frequent wrong prediction; ties to the lowest class index
            counts = {p: wrong.count(p) for p in set(wrong)}
            top = max(counts.values())
            assert rep["per_class"][c]["most_confused_with"] == d["class_names"][min(
                p for p, n in counts.items() if n == top)]
        else:
            assert rep["per_class"][c]["most_confused_with"] is None
    assert rep["mean_class_accuracy"] == pytest.approx(sum(accs) / len(accs))


def test_report_without_matplotlib(tmp_path, monkeypatch, capsys):
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    d = fake_scores()
    written = write_report(tmp_path, build_report(d["scores"], d["labels"], d["class_names"]))
    assert {p.name for p in written} == {"report.json", "report.md", "confusion.csv"}
    assert not (tmp_path / "confusion.png").exists()
    err = capsys.readouterr().err
    assert "matplotlib" in err and "skipped confusion.png" in err and len(err.strip().splitlines()) == 1


def test_report_class_without_samples():
    scores = np.eye(3, dtype=np.float32)[[0, 1, 1]]
    rep = build_report(scores, np.array([0, 1, 0]), ["a", "b", "c"])
    assert rep["per_class"][2]["accuracy"] is None and rep["per_class"][2]["support"] == 0
    json.dumps(rep, allow_nan=False)
