"""Multi-stream fusion: a weighted sum of the runs' scores, aligned by sample id.

Default fusion is the weighted sum of the raw logits, as the CTR-GCN / FR-Head reference ensembles do
(their published stream weights assume it); ``fuse(..., softmax=True)`` sums probabilities instead.
Runs are aligned by sample id (``names``), never by list order; runs whose sample sets, class lists or
labels differ are refused.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from . import metrics
from .errors import SkelactError
from .report import build_report, load_scores, save_scores, atomic_write_text, validate_scores, write_report


def _examples(ids: np.ndarray, n: int = 3) -> str:
    shown = ", ".join(str(x) for x in ids[:n])
    return shown + (", ..." if len(ids) > n else "")


def _run_name(run: dict, i: int) -> str:
    return str(run.get("run") or f"run {i + 1}")


def align_runs(runs: list[dict]) -> list[dict]:
    """Reorder every run's samples into the first run's order, matching by sample id.

    Each run is a dict with ``names``, ``labels``, ``scores``, ``class_names`` (and optionally ``run``,
    a name for messages). Raises SkelactError when ids are duplicated or the runs differ in sample
    set, class list or labels. Returns new dicts (the input is not modified).
    """
    if not runs:
        raise SkelactError("ensemble: no runs given")
    checked = []
    for i, r in enumerate(runs):
        v = validate_scores(r, _run_name(r, i))
        v["run"] = _run_name(r, i)
        checked.append({**r, **v})
    ref = checked[0]
    out = [ref]
    for r in checked[1:]:
        a, b = ref["run"], r["run"]
        if not np.array_equal(ref["class_names"], r["class_names"]):
            ka, kb = len(ref["class_names"]), len(r["class_names"])
            if ka != kb:
                what = f"{kb} classes vs {ka}"
            else:
                j = int(np.nonzero(ref["class_names"] != r["class_names"])[0][0])
                what = f"class {j} is '{r['class_names'][j]}' vs '{ref['class_names'][j]}'"
            raise SkelactError(f"{b}: class list differs from {a} ({what})")
        lacks = np.setdiff1d(ref["names"], r["names"])
        extra = np.setdiff1d(r["names"], ref["names"])
        if len(lacks) or len(extra):
            parts = []
            if len(lacks):
                parts.append(f"{b} lacks {len(lacks)} sample(s) of {a} (e.g. {_examples(lacks)})")
            if len(extra):
                parts.append(f"{b} has {len(extra)} sample(s) not in {a} (e.g. {_examples(extra)})")
            raise SkelactError("; ".join(parts))
        sorter = np.argsort(r["names"])
        idx = sorter[np.searchsorted(r["names"], ref["names"], sorter=sorter)]
        aligned = {**r, "names": r["names"][idx], "labels": r["labels"][idx], "scores": r["scores"][idx]}
        bad = np.nonzero(aligned["labels"] != ref["labels"])[0]
        if len(bad):
            i = bad[0]
            raise SkelactError(f"{b}: labels disagree with {a} for {len(bad)} sample(s) "
                               f"(e.g. {ref['names'][i]}: {aligned['labels'][i]} vs {ref['labels'][i]})")
        out.append(aligned)
    return out


def _check_weights(weights, n_runs: int) -> np.ndarray:
    w = np.ones(n_runs) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != n_runs:
        raise SkelactError(f"ensemble: {len(w)} weight(s) given for {n_runs} run(s); give one per run")
    if not np.isfinite(w).all() or (w < 0).any() or not (w > 0).any():
        raise SkelactError(f"ensemble: weights must be finite, non-negative and not all zero, "
                           f"got {' '.join(f'{x:g}' for x in w)}")
    return w


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def fuse(runs: list[dict], weights=None, softmax: bool = False) -> dict:
    """Weighted sum of the runs' (N, K) scores after aligning them by sample id.

    ``weights``: one non-negative number per run (default 1 each). ``softmax``: sum probabilities
    instead of logits. Returns ``{"names", "labels", "class_names"}`` in the first run's order and
    ``"scores"`` (N, K) float32.
    """
    return _weighted_sum(align_runs(runs), weights, softmax)


def _weighted_sum(aligned: list[dict], weights, softmax: bool = False) -> dict:
    """:func:`fuse` for runs already aligned by :func:`align_runs`."""
    w = _check_weights(weights, len(aligned))
    total = np.zeros(aligned[0]["scores"].shape, dtype=np.float64)
    for wi, r in zip(w, aligned):
        s = r["scores"].astype(np.float64)
        total += wi * (_softmax(s) if softmax else s)
    ref = aligned[0]
    return {"names": ref["names"], "labels": ref["labels"], "class_names": ref["class_names"],
            "scores": total.astype(np.float32)}


# The published 4-stream weights (joint, bone, joint motion, bone motion; DATA.md): NW-UCLA and NTU60
# x-view 0.6/0.6/0.4/0.4 (scaled to a largest weight of 1: 1, 1, 2/3, 2/3, off the 0.1 grid), NTU60 x-sub
# 2/2/1/1 (1, 1, 0.5, 0.5, on it; listed for completeness).
PUBLISHED_4_STREAM = ((0.6, 0.6, 0.4, 0.4), (2.0, 2.0, 1.0, 1.0))


def weight_grid(n_runs: int, max_points: int = 5000) -> tuple[np.ndarray, float]:
    """Candidate weight vectors for the search, (G, n_runs), and the grid step.

    Weights take values in {0, step, ..., 1} with the largest weight equal to 1 (the fused argmax does not
    change when all weights are scaled, so other scalings are redundant). The step is the finest of 0.1,
    0.2, 0.25, 0.5, 1 that keeps the grid at most ``max_points`` vectors (0.1 up to 4 runs). For 4 runs
    the published stream weights are candidates too.
    """
    for step in (0.1, 0.2, 0.25, 0.5, 1.0):
        n = round(1 / step)
        if (n + 1) ** n_runs - n ** n_runs <= max_points or step == 1.0:
            break
    values = np.round(np.arange(n + 1) * step, 6)
    grid = np.array(list(itertools.product(values, repeat=n_runs)))
    grid = grid[grid.max(axis=1) == 1.0]
    if n_runs == 4:
        extra = np.array(PUBLISHED_4_STREAM) / np.max(PUBLISHED_4_STREAM, axis=1, keepdims=True)
        grid = np.unique(np.concatenate([grid, np.round(extra, 12)]), axis=0)
    return grid, step


def search_weights(runs: list[dict], softmax: bool = False, max_points: int = 5000) -> dict:
    """Grid-search fusion weights on (validation) runs; see :func:`weight_grid` for the grid.

    The best vector has the highest top-1; ties go to the higher top-5, then to the vector closest to
    equal weights (relying on more streams generalises better). Returns ``{"weights": (R,) array,
    "top1", "top5", "step", "tried"}``.
    """
    runs = align_runs(runs)
    labels = runs[0]["labels"]
    stack = np.stack([_softmax(r["scores"].astype(np.float64)) if softmax else r["scores"] for r in runs])
    grid, step = weight_grid(len(runs), max_points)
    best, best_key = None, None
    for w in grid:
        fused = np.tensordot(w.astype(stack.dtype), stack, axes=1)
        top1 = 100.0 * np.mean(fused.argmax(axis=1) == labels)
        if best_key is not None and top1 < best_key[0]:
            continue  # top-5 only matters to break ties
        top5 = 100.0 * np.mean(metrics.true_class_rank(fused, labels) < 5)
        key = (top1, top5, -float(np.var(w / w.sum())))
        if best_key is None or key > best_key:
            best, best_key = w, key
    return {"weights": best, "top1": float(best_key[0]), "top5": float(best_key[1]), "step": step,
            "tried": len(grid)}


def _common(summaries: list, key: str):
    values = {json.dumps(s.get(key)) if s else "null" for s in summaries}
    return json.loads(values.pop()) if len(values) == 1 else None


def ensemble_command(args) -> None:
    """``skelact ensemble RUN... [--weights W...] [--search] [--out DIR]``."""
    if args.search and args.weights is not None:
        raise SkelactError("ensemble: give either --weights or --search, not both")
    runs = [load_scores(p) for p in args.runs]
    if len(runs) < 2:
        print("note: only one run given; the 'ensemble' is that run")
    search = None
    if args.search:
        val = [load_scores(p, "val_scores") for p in args.runs]
        for v, r in zip(val, runs):
            if not np.array_equal(v["class_names"], r["class_names"]):
                raise SkelactError(f"{v['file']}: class list differs from {r['file']}")
        search = search_weights(val)
        weights = search["weights"]
    else:
        weights = _check_weights(args.weights, len(runs))
    aligned = align_runs(runs)
    fused = _weighted_sum(aligned, weights)

    width = max(12, *(len(r["run"]) for r in runs))
    print(f"{'run':<{width}}  {'weight':>6}  {'top-1':>6}  {'top-5':>6}")
    for w, r in zip(weights, aligned):
        print(f"{r['run']:<{width}}  {w:>6.3g}  {metrics.topk_accuracy(r['scores'], r['labels'], 1):>6.2f}  "
              f"{metrics.topk_accuracy(r['scores'], r['labels'], 5):>6.2f}")
    top1 = metrics.topk_accuracy(fused["scores"], fused["labels"], 1)
    top5 = metrics.topk_accuracy(fused["scores"], fused["labels"], 5)
    print(f"{'fused':<{width}}  {'':>6}  {top1:>6.2f}  {top5:>6.2f}")
    if search:
        print(f"weights searched on validation ({len(val[0]['names'])} samples, step {search['step']:g}, "
              f"{search['tried']} candidates): val top-1 {search['top1']:.2f}; test numbers above use them")
    print(f"{len(fused['names'])} samples, {len(fused['class_names'])} classes, "
          "fused as a weighted sum of logits")

    if args.out:
        _write_ensemble(Path(args.out), runs, weights, fused, top1, top5, search)


def _write_ensemble(out: Path, runs, weights, fused, top1, top5, search) -> None:
    for r in runs:
        run_dir = Path(r["run"]) if Path(r["run"]).is_dir() else Path(r["run"]).parent
        if out.resolve() == run_dir.resolve():
            raise SkelactError(f"{out}: is one of the input runs; choose another --out")
    if (out / "config.yaml").exists():
        raise SkelactError(f"{out}: holds a training run (config.yaml); choose another --out")
    summaries = [r["summary"] for r in runs]
    streams = [s.get("stream") if s else None for s in summaries]
    summary = {"top1": top1, "top5": top5, "split": _common(summaries, "split"),
               "dataset": _common(summaries, "dataset"),
               "stream": "+".join(str(s) for s in streams) if all(streams) else "ensemble",
               "num_samples": len(fused["names"]), "fusion": "weighted sum of logits",
               "runs": [str(Path(r["run"]).resolve()) for r in runs],
               "weights": [float(w) for w in weights], "searched": bool(search),
               "val_top1": search["top1"] if search else None}
    try:
        out.mkdir(parents=True, exist_ok=True)
        save_scores(out / "scores.npz", fused["names"], fused["labels"], fused["scores"],
                    fused["class_names"])
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    except OSError as e:
        raise SkelactError(f"{out}: cannot write the ensemble ({e.strerror or e})") from None
    report = build_report(fused["scores"], fused["labels"], fused["class_names"], names=fused["names"])
    write_report(out, report, title=f"Ensemble of {len(runs)} runs")
    print(f"wrote {out}/scores.npz, summary.json and the report")
