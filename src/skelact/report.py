"""Loading a run's scores, building an evaluation report and writing it.

``load_scores(path)`` reads ``scores.npz`` (or ``val_scores.npz``) of a run directory, or an .npz file,
and validates it. ``build_report`` turns scores into a dict; ``write_report`` writes ``report.json``,
``report.md``, ``confusion.csv`` and, when matplotlib is installed, ``confusion.png``.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

from . import metrics
from .errors import SkelactError
from .fileio import atomic_write_bytes, atomic_write_text  # noqa: F401 (re-exported)

SCORE_KEYS = ("names", "labels", "scores", "class_names")


# ----------------------------------------------------------------------------------------- loading
def _score_file(path: Path, which: str) -> Path:
    """The .npz to read: ``<dir>/<which>.npz`` for a run dir; for a file, itself or its ``val_`` sibling."""
    if path.is_dir():
        return path / f"{which}.npz"
    if which == "scores":
        return path
    return path.with_name(f"val_{path.name}")


def load_scores(path, which: str = "scores") -> dict:
    """Read and validate a run's scores.

    ``path``: a run directory or an .npz file. ``which``: ``"scores"`` (test) or ``"val_scores"``.
    Returns ``{"names": (N,) str, "labels": (N,) int64, "scores": (N, K) float32, "class_names": (K,)
    str, "run": the path as given, "file": the .npz read, "summary": summary.json dict or None}``.
    """
    path = Path(path)
    if not path.exists():
        raise SkelactError(f"{path}: no such run directory or file")
    file = _score_file(path, which)
    if not file.is_file():
        hint = ("; the run needs a validation split for this" if which != "scores"
                else "; has the run finished? 'skelact evaluate' writes it")
        raise SkelactError(f"{path}: no {file.name}{hint}")
    if not zipfile.is_zipfile(file):
        raise SkelactError(f"{file}: not a readable .npz file (not a zip archive; truncated or "
                           "another format)")
    try:
        with np.load(file, allow_pickle=False) as z:
            missing = [k for k in SCORE_KEYS if k not in z.files]
            if missing:
                raise SkelactError(f"{file}: missing key(s) {', '.join(missing)} "
                                   f"(has {', '.join(z.files) or 'none'})")
            data = {k: z[k] for k in SCORE_KEYS}
    except SkelactError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise SkelactError(f"{file}: holds Python object arrays; save names and class_names as "
                               "str arrays") from None
        raise SkelactError(f"{file}: not a readable .npz file ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise SkelactError(f"{file}: not a readable .npz file ({e})") from None
    data = validate_scores(data, str(file))
    data["run"] = str(path)
    data["file"] = str(file)
    summary_file = (path if path.is_dir() else path.parent) / "summary.json"
    data["summary"] = None
    if summary_file.is_file():
        try:
            data["summary"] = json.loads(summary_file.read_text())
        except (OSError, ValueError) as e:
            raise SkelactError(f"{summary_file}: not readable JSON ({e})") from None
    return data


def validate_scores(data: dict, where: str) -> dict:
    """Check keys, shapes, dtypes, label range, finiteness and unique sample ids; return normalised copies.

    ``where`` names the run or file in error messages.
    """
    missing = [k for k in SCORE_KEYS if k not in data]
    if missing:
        raise SkelactError(f"{where}: missing key(s) {', '.join(missing)}")
    names = np.asarray(data["names"])
    labels = np.asarray(data["labels"])
    scores = np.asarray(data["scores"])
    class_names = np.asarray(data["class_names"])
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise SkelactError(f"{where}: scores must be a non-empty (N, K) array, got shape {scores.shape}")
    n, k = scores.shape
    if not np.issubdtype(scores.dtype, np.number):
        raise SkelactError(f"{where}: scores must be numeric, got dtype {scores.dtype}")
    for key, arr, want in (("names", names, n), ("labels", labels, n), ("class_names", class_names, k)):
        if arr.shape != (want,):
            raise SkelactError(f"{where}: {key} has shape {arr.shape}, expected ({want},) to match "
                               f"scores {scores.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise SkelactError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    bad = (labels < 0) | (labels >= k)
    if bad.any():
        raise SkelactError(f"{where}: {int(bad.sum())} label(s) outside [0, {k}) "
                           f"(e.g. {int(labels[bad][0])})")
    nonfinite = ~np.isfinite(scores)
    if nonfinite.any():
        rows = np.nonzero(nonfinite.any(axis=1))[0]
        raise SkelactError(f"{where}: {int(nonfinite.sum())} NaN/inf score(s) in {len(rows)} sample(s) "
                           f"(e.g. {names[rows[0]]})")
    names = names.astype(str)
    uniq, counts = np.unique(names, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise SkelactError(f"{where}: {len(dup)} duplicated sample id(s) (e.g. {dup[0]} appears "
                           f"{counts[counts > 1][0]} times); scores are aligned by id, so ids must be unique")
    return {"names": names, "labels": labels.astype(np.int64),
            "scores": scores.astype(np.float32, copy=False), "class_names": class_names.astype(str)}


def save_scores(path, names, labels, scores, class_names) -> None:
    """Write a scores.npz (the run-directory format) atomically."""
    buf = io.BytesIO()
    np.savez(buf, names=np.asarray(names).astype(str), labels=np.asarray(labels, dtype=np.int64),
             scores=np.asarray(scores, dtype=np.float32), class_names=np.asarray(class_names).astype(str))
    atomic_write_bytes(path, buf.getvalue())


# ------------------------------------------------------------------------------------------ report
def _num(x: float) -> float | None:
    """JSON-safe float: NaN becomes None."""
    return None if np.isnan(x) else float(x)


def build_report(scores, labels, class_names, names=None, top: int = 10, examples: int = 3) -> dict:
    """Evaluation report of (N, K) ``scores`` against (N,) ``labels``.

    Returns a JSON-ready dict: ``num_samples``, ``num_classes``, ``top1``, ``top5``, ``mean_class_accuracy``
    (percent), ``class_names``, ``per_class`` (per class in class order: ``index``, ``name``,
    ``accuracy`` (percent, None without samples), ``correct``, ``support``, ``most_confused_with``),
    ``confusion`` (K x K list, rows = true), ``confused_pairs`` (the ``top`` directed off-diagonal pairs:
    ``true`` and ``predicted`` (class names), ``true_index``, ``predicted_index``, ``count``, ``rate`` =
    percent of the true class;
    with ``names`` also up to ``examples`` sample ids).
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=np.int64)
    class_names = [str(c) for c in class_names]
    k = len(class_names)
    preds = metrics.predictions(scores)
    cm = metrics.confusion_matrix(labels, preds, k)
    acc, support = metrics.per_class_accuracy(cm)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    worst_pred = off.argmax(axis=1)
    per_class = [{"index": i, "name": class_names[i], "accuracy": _num(acc[i]), "correct": int(cm[i, i]),
                  "support": int(support[i]),
                  "most_confused_with": class_names[worst_pred[i]] if off[i, worst_pred[i]] > 0 else None}
                 for i in range(k)]
    pairs = []
    for t, p, count, rate in metrics.confused_pairs(cm, top):
        pair = {"true": class_names[t], "predicted": class_names[p], "true_index": t, "predicted_index": p,
                "count": count, "rate": rate}
        if names is not None:
            hit = np.nonzero((labels == t) & (preds == p))[0][:examples]
            pair["examples"] = [str(names[i]) for i in hit]
        pairs.append(pair)
    return {"num_samples": int(len(labels)), "num_classes": k,
            "top1": metrics.topk_accuracy(scores, labels, 1),
            "top5": metrics.topk_accuracy(scores, labels, 5),
            "mean_class_accuracy": float(np.nanmean(acc)), "class_names": class_names,
            "per_class": per_class, "confusion": cm.tolist(), "confused_pairs": pairs}


def report_markdown(report: dict, title: str = "Evaluation report") -> str:
    """The human-readable report.md text: headline numbers, per-class table (worst first), confused pairs."""
    lines = [f"# {title}", "",
             f"- samples: {report['num_samples']}, classes: {report['num_classes']}",
             f"- top-1: {report['top1']:.2f} %",
             f"- top-5: {report['top5']:.2f} %",
             f"- mean class accuracy: {report['mean_class_accuracy']:.2f} %", "",
             "## Per-class accuracy (worst first)", "",
             "| class | accuracy % | correct / support | most often mistaken for |",
             "|---|---:|---:|---|"]
    rows = sorted(report["per_class"], key=lambda c: (c["accuracy"] is None,
                                                      c["accuracy"] or 0.0, c["index"]))
    for c in rows:
        accuracy = "n/a" if c["accuracy"] is None else f"{c['accuracy']:.2f}"
        lines.append(f"| {c['name']} | {accuracy} | {c['correct']} / {c['support']} | "
                     f"{c['most_confused_with'] or '-'} |")
    lines += ["", "## Most confused pairs (true class predicted as another)", ""]
    if not report["confused_pairs"]:
        lines.append("No misclassified samples.")
    else:
        has_examples = "examples" in report["confused_pairs"][0]
        lines += ["| true | predicted as | count | % of true class |" + (" examples |" * has_examples),
                  "|---|---|---:|---:|" + ("---|" * has_examples)]
        for p in report["confused_pairs"]:
            extra = f" {', '.join(p['examples'])} |" if has_examples else ""
            lines.append(f"| {p['true']} | {p['predicted']} | {p['count']} | {p['rate']:.1f} |{extra}")
    return "\n".join(lines) + "\n"


def confusion_csv(report: dict) -> str:
    """confusion.csv text: header ``true \\ predicted,<class names>``, then one row per true class."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["true \\ predicted", *report["class_names"]])
    for name, row in zip(report["class_names"], report["confusion"]):
        w.writerow([name, *row])
    return buf.getvalue()


def _confusion_png(report: dict, title: str) -> bytes | None:
    """PNG bytes of the row-normalised confusion matrix, or None when matplotlib is not installed."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError:
        return None
    del matplotlib
    cm = np.asarray(report["confusion"], dtype=np.float64)
    k = len(cm)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.25 * k, 30)
    fig = Figure(figsize=(size, size * 0.9))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if k <= 60:
        ax.set_xticks(range(k), report["class_names"], rotation=90, fontsize=max(4, 10 - k // 10))
        ax.set_yticks(range(k), report["class_names"], fontsize=max(4, 10 - k // 10))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} (top-1 {report['top1']:.2f} %)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_report(out_dir, report: dict, title: str = "Evaluation report", plot: bool = True) -> list[Path]:
    """Write report.json, report.md, confusion.csv and (matplotlib permitting) confusion.png atomically.

    Without matplotlib the PNG is skipped with a one-line note on stderr. Returns the paths written.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in (("report.json", json.dumps(report, indent=1) + "\n"),
                           ("report.md", report_markdown(report, title)),
                           ("confusion.csv", confusion_csv(report))):
            atomic_write_text(out / name, text)
            written.append(out / name)
        if plot:
            png = _confusion_png(report, title)
            if png is None:
                print("note: matplotlib is not installed; skipped confusion.png "
                      "(pip install 'skelact[plots]')", file=sys.stderr)
            else:
                atomic_write_bytes(out / "confusion.png", png)
                written.append(out / "confusion.png")
    except OSError as e:
        raise SkelactError(f"{out}: cannot write the report ({e.strerror or e})") from None
    return written
