import json

import numpy as np
import pytest

from skelact.cli import main
from skelact.compare import compare
from skelact.errors import SkelactError
from skelact.report import save_scores

CLASSES = np.array(["reading", "writing", "clapping", "waving"])


def one_hot_run(preds, labels, run):
    """A run whose prediction for sample i is preds[i]."""
    n = len(labels)
    return {"names": np.array([f"S{i:03d}" for i in range(n)]), "labels": np.asarray(labels),
            "scores": np.eye(4, dtype=np.float32)[preds] * 5.0, "class_names": CLASSES, "run": run}


def constructed():
    """20 samples per class; A predicts 'reading' as 'writing' 6 times and 'clapping' as 'waving' 2 times;
    B fixes 5 of the reading->writing errors, keeps the others, and breaks one waving sample into clapping."""
    labels = np.repeat(np.arange(4), 20)
    pa = labels.copy()
    pa[0:6] = 1
    pa[40:42] = 3
    pb = labels.copy()
    pb[0:1] = 1
    pb[40:42] = 3
    pb[60] = 2
    return one_hot_run(pa, labels, "runs/ctrgcn"), one_hot_run(pb, labels, "runs/frhead")


def test_compare_known_pair_improves():
    a, b = constructed()
    r = compare(a, b, top=5)
    assert r["top1_a"] == pytest.approx(100 * 72 / 80) and r["top1_b"] == pytest.approx(100 * 76 / 80)
    assert r["top1_diff"] == pytest.approx(5.0) and r["fixed"] == 5 and r["broken"] == 1
    first = r["pairs"][0]
    assert (first["true"], first["predicted"]) == ("reading", "writing")
    assert (first["count_a"], first["count_b"], first["change"], first["status"]) == (6, 1, -5, "improved")
    second = r["pairs"][1]
    assert (second["true"], second["count_a"], second["count_b"], second["status"]) == \
        ("clapping", 2, 2, "unchanged")
    new = [(p["true"], p["predicted"], p["status"]) for p in r["new_pairs"]]
    assert new == [("waving", "clapping", "worsened")]
    diffs = [c["diff"] for c in r["per_class"]]
    assert diffs == sorted(diffs, reverse=True)
    assert r["per_class"][0]["name"] == "reading" and r["per_class"][0]["diff"] == pytest.approx(25.0)
    assert r["per_class"][-1]["name"] == "waving" and r["per_class"][-1]["diff"] == pytest.approx(-5.0)


def test_compare_aligns_by_id_and_refuses_mismatch():
    a, b = constructed()
    p = np.random.default_rng(0).permutation(80)
    shuffled = {**b, "names": b["names"][p], "labels": b["labels"][p], "scores": b["scores"][p]}
    assert compare(a, shuffled) == compare(a, b)
    short = {**b, "names": b["names"][:-1], "labels": b["labels"][:-1], "scores": b["scores"][:-1]}
    with pytest.raises(SkelactError, match="runs/frhead lacks 1 sample"):
        compare(a, short)


def test_compare_cli_prints_and_writes(tmp_path, capsys):
    a, b = constructed()
    for run, d in (("ctrgcn", a), ("frhead", b)):
        (tmp_path / run).mkdir()
        save_scores(tmp_path / run / "scores.npz", d["names"], d["labels"], d["scores"], d["class_names"])
        (tmp_path / run / "summary.json").write_text(json.dumps({"top1": 0, "top5": 0}))
    assert main(["compare", str(tmp_path / "ctrgcn"), str(tmp_path / "frhead"), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "top-1: 90.00 -> 95.00 (+5.00)" in out
    assert "| reading | writing | 6 | 1 | -5 | improved |" in out
    written = tmp_path / "frhead" / "compare_ctrgcn.md"
    assert written.is_file() and "improved" in written.read_text()
    elsewhere = tmp_path / "reports" / "pair.md"
    elsewhere.parent.mkdir()
    default_text = written.read_text()
    written.unlink()
    assert main(["compare", str(tmp_path / "ctrgcn"), str(tmp_path / "frhead"), "--out", str(elsewhere)]) == 0
    assert elsewhere.read_text() == default_text
    assert not written.exists()  # --out leaves the run directory alone
    assert main(["compare", str(tmp_path / "ctrgcn"), str(tmp_path / "nope")]) == 2
    assert "no such run" in capsys.readouterr().err


def test_summarize_groups_seeds(tmp_path, capsys):
    import json
    from skelact.cli import main as cli
    from skelact.compare import summarize
    base = {"dataset": "nw_ucla", "split": "xview", "stream": "j", "model": "ctrgcn", "epochs": 16}
    for name, seed, top1, heads in (("ucla-s0", 0, 90.0, ["frhead"]), ("ucla-s1", 1, 92.0, ["frhead"]),
                                    ("ucla-s2", 2, 94.0, ["frhead"]),
                                    ("ucla-baseline-s0", 0, 89.0, [])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(
            {**base, "seed": seed, "top1": top1, "top5": 99.0, "heads": heads}))
    rows = {r["setup"]: r for r in summarize(sorted(tmp_path.iterdir()))}
    assert rows["ucla"]["n"] == 3 and rows["ucla"]["top1_mean"] == pytest.approx(92.0)
    assert rows["ucla"]["top1_std"] == pytest.approx(2.0)  # sample std of 90, 92, 94
    assert rows["ucla-baseline"]["n"] == 1
    assert cli(["summarize", *map(str, sorted(tmp_path.iterdir()))]) == 0
    assert "92.00 ± 2.00" in capsys.readouterr().out
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(SkelactError, match="not a finished run"):
        summarize([tmp_path / "unfinished"])
    # the command skips unfinished runs with a note, and refuses a run passed twice (e.g. via a copy)
    runs = sorted(map(str, tmp_path.iterdir()))
    assert cli(["summarize", *runs]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "unfinished" in captured.err and "92.00 ± 2.00" in captured.out
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "ucla-s1").mkdir()
    (tmp_path / "copy" / "ucla-s1" / "summary.json").write_text(
        (tmp_path / "ucla-s1" / "summary.json").read_text())
    with pytest.raises(SkelactError, match="same setup and seed"):
        summarize([tmp_path / "ucla-s1", tmp_path / "copy" / "ucla-s1"])
    assert cli(["summarize", str(tmp_path / "unfinished")]) == 2
    # same run name and seed but another setup (e.g. a --set override of a head option): two rows, no refusal
    (tmp_path / "variant").mkdir()
    for name, seed, setup in (("ucla-s0", 0, "aaaaaaaaaaaa"), ("ucla-s0-2", 0, "bbbbbbbbbbbb")):
        (tmp_path / "variant" / name).mkdir()
        (tmp_path / "variant" / name / "summary.json").write_text(json.dumps(
            {**base, "seed": seed, "top1": 90.0, "top5": 99.0, "heads": ["frhead"], "setup": setup}))
    rows = summarize(sorted((tmp_path / "variant").iterdir()))
    assert sorted(r["setup"] for r in rows) == ["ucla [aaaaaaaaaaaa]", "ucla [bbbbbbbbbbbb]"]
    assert all(r["n"] == 1 for r in rows)
    # a damaged summary.json is a one-line error naming the file, not a traceback
    for text in ("{not json", json.dumps({**base, "seed": 9, "top5": 99.0})):
        (tmp_path / "broken").mkdir(exist_ok=True)
        (tmp_path / "broken" / "summary.json").write_text(text)
        with pytest.raises(SkelactError, match="broken/summary.json: unreadable run summary"):
            summarize([tmp_path / "broken"])
        assert cli(["summarize", str(tmp_path / "broken")]) == 2
