import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from skelact import metrics
from skelact.cli import main
from skelact.ensemble import align_runs, fuse, search_weights, weight_grid
from skelact.errors import SkelactError
from skelact.report import load_scores, save_scores

K = 5
CLASSES = np.array([f"action{c}" for c in range(K)])


def make_run(path, names, labels, scores, stream="j", val=None):
    """A fake run dir: scores.npz, summary.json, optional val_scores.npz from val=(names, labels, scores)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_scores(path / "scores.npz", names, labels, scores, CLASSES)
    if val is not None:
        save_scores(path / "val_scores.npz", *val, CLASSES)
    top1 = metrics.topk_accuracy(scores, labels, 1)
    (path / "summary.json").write_text(json.dumps({"top1": top1, "top5": 100.0, "split": "xsub",
                                                   "stream": stream, "dataset": "fake"}))
    return path


def streams(n=40, r=3, seed=0):
    rng = np.random.default_rng(seed)
    names = np.array([f"S{i:03d}C001A{i % K:03d}" for i in range(n)])
    labels = rng.integers(0, K, n)
    scores = [rng.normal(size=(n, K)).astype(np.float32) + 1.5 * np.eye(K, dtype=np.float32)[labels]
              for _ in range(r)]
    return names, labels, scores


def as_run(names, labels, scores, run):
    return {"names": names, "labels": labels, "scores": scores, "class_names": CLASSES, "run": run}


def test_fuse_aligns_shuffled_orders():
    names, labels, scores = streams()
    w = [0.6, 0.3, 0.1]
    expected = sum(wi * s.astype(np.float64) for wi, s in zip(w, scores)).astype(np.float32)
    rng = np.random.default_rng(5)
    runs = [as_run(names, labels, scores[0], "A")]
    for i, s in enumerate(scores[1:]):
        p = rng.permutation(len(names))
        runs.append(as_run(names[p], labels[p], s[p], f"run{i}"))
    fused = fuse(runs, w)
    assert np.array_equal(fused["names"], names) and np.array_equal(fused["labels"], labels)
    assert np.array_equal(fused["scores"], expected)
    # list order would have given a different (wrong) answer
    naive = sum(wi * r["scores"] for wi, r in zip(w, runs))
    assert not np.allclose(naive, expected)


def test_fuse_default_weights_and_softmax():
    names, labels, scores = streams(r=2)
    runs = [as_run(names, labels, s, f"r{i}") for i, s in enumerate(scores)]
    assert np.allclose(fuse(runs)["scores"], scores[0] + scores[1])
    probs = fuse(runs, softmax=True)["scores"]
    assert np.allclose(probs.sum(axis=1), 2.0, atol=1e-5)


def test_refuses_different_sample_sets():
    names, labels, scores = streams(r=2)
    a = as_run(names, labels, scores[0], "runs/A")
    b = as_run(names[3:], labels[3:], scores[1][3:], "runs/B")
    with pytest.raises(SkelactError) as e:
        fuse([a, b])
    msg = str(e.value)
    assert "runs/B lacks 3 sample(s) of runs/A" in msg and names[0] in msg and "\n" not in msg
    c = as_run(np.r_[names[:-1], ["X999"]], labels, scores[1], "runs/C")
    with pytest.raises(SkelactError, match=r"runs/C lacks 1 sample\(s\) of runs/A .*; "
                                           r"runs/C has 1 sample\(s\) not in runs/A \(e.g. X999\)"):
        fuse([a, c])


def test_refuses_different_classes_labels_and_duplicates():
    names, labels, scores = streams(r=2)
    a = as_run(names, labels, scores[0], "runs/A")
    other = dict(as_run(names, labels, scores[1], "runs/B"), class_names=CLASSES[::-1].copy())
    with pytest.raises(SkelactError, match="runs/B: class list differs from runs/A .class 0 is 'action4'"):
        fuse([a, other])
    keep = labels < 4
    a4 = as_run(names[keep], labels[keep], scores[0][keep], "runs/A")
    fewer = dict(as_run(names[keep], labels[keep], scores[1][keep, :4], "runs/B"), class_names=CLASSES[:4])
    with pytest.raises(SkelactError, match="runs/B: class list differs from runs/A .4 classes vs 5"):
        fuse([a4, fewer])
    relabelled = as_run(names, (labels + 1) % K, scores[1], "runs/B")
    with pytest.raises(SkelactError, match="runs/B: labels disagree with runs/A for 40 sample"):
        fuse([a, relabelled])
    dup_names = names.copy()
    dup_names[1] = dup_names[0]
    with pytest.raises(SkelactError, match="runs/B: 1 duplicated sample id.*S000C001A000"):
        fuse([a, as_run(dup_names, labels, scores[1], "runs/B")])


def test_weight_count_and_values_checked():
    names, labels, scores = streams(r=2)
    runs = [as_run(names, labels, s, f"r{i}") for i, s in enumerate(scores)]
    with pytest.raises(SkelactError, match="3 weight.s. given for 2 run"):
        fuse(runs, [1, 1, 1])
    with pytest.raises(SkelactError, match="non-negative"):
        fuse(runs, [1, -1])
    with pytest.raises(SkelactError, match="not all zero"):
        fuse(runs, [0, 0])


def test_weight_grid():
    grid, step = weight_grid(2)
    assert step == 0.1 and len(grid) == 21 and (grid.max(axis=1) == 1).all()
    grid4, step4 = weight_grid(4)
    # + 1: 0.6/0.6/0.4/0.4 (1, 1, 2/3, 2/3) is off the grid; 2/2/1/1 = (1, 1, 0.5, 0.5) is on it
    assert step4 == 0.1 and len(grid4) == 11 ** 4 - 10 ** 4 + 1 and (grid4.max(axis=1) == 1).all()
    assert len(np.unique(grid4, axis=0)) == len(grid4)
    for published in ([0.6, 0.6, 0.4, 0.4], [2, 2, 1, 1]):  # DATA.md's weights are candidates
        w = np.array(published) / max(published)
        assert np.isclose(grid4, w).all(axis=1).any()
    assert len(weight_grid(8)[0]) <= 5000


def test_search_ignores_a_useless_stream():
    rng = np.random.default_rng(2)
    n = 300
    names = np.array([f"V{i:04d}" for i in range(n)])
    labels = rng.integers(0, K, n)
    good = np.eye(K, dtype=np.float32)[labels] + rng.normal(0, 0.3, (n, K)).astype(np.float32)
    useless = rng.normal(0, 5.0, (n, K)).astype(np.float32)
    p = rng.permutation(n)
    res = search_weights([as_run(names, labels, useless, "u"), as_run(names[p], labels[p], good[p], "g")])
    assert list(res["weights"]) == [0.0, 1.0]
    assert res["top1"] == pytest.approx(metrics.topk_accuracy(good, labels, 1))


# --------------------------------------------------------------------------------------------- CLI
def test_cli_subprocess_weights(tmp_path):
    names, labels, scores = streams(r=2)
    p = np.random.default_rng(1).permutation(len(names))
    a = make_run(tmp_path / "A", names, labels, scores[0])
    b = make_run(tmp_path / "B", names[p], labels[p], scores[1][p], stream="b")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    cmd = [sys.executable, "-m", "skelact", "ensemble", str(a), str(b), "--weights", "0.6", "0.4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    expected = metrics.topk_accuracy(0.6 * scores[0].astype(np.float64) + 0.4 * scores[1], labels, 1)
    fused_line = [ln for ln in proc.stdout.splitlines() if ln.startswith("fused")][0]
    assert f"{expected:.2f}" in fused_line
    assert f"{metrics.topk_accuracy(scores[0], labels, 1):.2f}" in proc.stdout


def test_cli_errors(tmp_path, capsys):
    names, labels, scores = streams(r=2)
    a = make_run(tmp_path / "A", names, labels, scores[0])
    b = make_run(tmp_path / "B", names[:-2], labels[:-2], scores[1][:-2])
    assert main(["ensemble", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "lacks 2 sample(s)" in err and len(err.strip().splitlines()) == 1
    assert main(["ensemble", str(a), str(a), "--weights", "1"]) == 2
    assert "1 weight(s) given for 2 run(s)" in capsys.readouterr().err
    assert main(["ensemble", str(a), str(a), "--search"]) == 2
    assert "no val_scores.npz" in capsys.readouterr().err
    assert main(["ensemble", str(a), str(a), "--out", str(a)]) == 2
    assert "is one of the input runs" in capsys.readouterr().err


def test_cli_search_and_out(tmp_path, capsys):
    rng = np.random.default_rng(3)
    names, labels, scores = streams(n=60, r=2, seed=4)
    vn = np.array([f"val{i}" for i in range(200)])
    vl = rng.integers(0, K, 200)
    good = np.eye(K, dtype=np.float32)[vl] + rng.normal(0, 0.3, (200, K)).astype(np.float32)
    noise = rng.normal(0, 5.0, (200, K)).astype(np.float32)
    a = make_run(tmp_path / "A", names, labels, scores[0], stream="j", val=(vn, vl, good))
    b = make_run(tmp_path / "B", names, labels, scores[1], stream="b", val=(vn[::-1], vl[::-1], noise[::-1]))
    out = tmp_path / "fused"
    assert main(["ensemble", str(a), str(b), "--search", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "weights searched on validation (200 samples" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["weights"] == [1.0, 0.0] and summary["searched"] and summary["stream"] == "j+b"
    assert summary["split"] == "xsub" and summary["dataset"] == "fake"
    fused = load_scores(out)
    assert np.array_equal(fused["scores"], scores[0]) and np.array_equal(fused["names"], names)
    assert summary["top1"] == pytest.approx(metrics.topk_accuracy(scores[0], labels, 1))
    for f in ("report.json", "report.md", "confusion.csv"):
        assert (out / f).is_file()


def test_align_runs_keeps_first_order():
    names, labels, scores = streams(r=2)
    p = np.arange(len(names))[::-1]
    a, b = align_runs([as_run(names[p], labels[p], scores[0][p], "a"), as_run(names, labels, scores[1], "b")])
    assert np.array_equal(b["names"], names[p]) and np.array_equal(b["scores"], scores[1][p])
