"""Compare two runs on the same test set: overall, per-class, and on the baseline's confused pairs.

This is the view the FR-Head paper argues with: does method B separate the ambiguous actions that
baseline A confuses? Confused pairs are directed ("true class predicted as another class").
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from . import metrics
from .ensemble import align_runs
from .errors import SkelactError
from .report import atomic_write_text, load_scores


def _stats(scores, labels, k):
    preds = metrics.predictions(scores)
    cm = metrics.confusion_matrix(labels, preds, k)
    acc, support = metrics.per_class_accuracy(cm)
    return preds, cm, acc, support


def _num(x) -> float | None:
    return None if np.isnan(x) else float(x)


def compare(a: dict, b: dict, top: int = 10) -> dict:
    """Compare run ``b`` against baseline ``a`` (score dicts as from :func:`skelact.report.load_scores`).

    Samples are matched by id; differing sample sets or class lists raise SkelactError. Returns
    ``top1_a``, ``top1_b``, ``top1_diff`` (and top-5, mean class accuracy), ``fixed`` / ``broken``
    (samples wrong in A and right in B / the reverse), ``per_class`` (``name``, ``support``, ``acc_a``,
    ``acc_b``, ``diff``; sorted by ``diff``, largest gain first), ``pairs`` (A's ``top`` confused pairs
    with ``count_a``, ``count_b``, ``change`` = B - A, ``status`` improved / worsened / unchanged) and
    ``new_pairs`` (B's top pairs that are not among A's).
    """
    a, b = align_runs([a, b])
    labels, class_names = a["labels"], [str(c) for c in a["class_names"]]
    k = len(class_names)
    pred_a, cm_a, acc_a, support = _stats(a["scores"], labels, k)
    pred_b, cm_b, acc_b, _ = _stats(b["scores"], labels, k)
    right_a, right_b = pred_a == labels, pred_b == labels
    out = {"run_a": a["run"], "run_b": b["run"], "num_samples": int(len(labels)), "num_classes": k,
           "fixed": int((~right_a & right_b).sum()), "broken": int((right_a & ~right_b).sum())}
    for kk in (1, 5):
        ta = metrics.topk_accuracy(a["scores"], labels, kk)
        tb = metrics.topk_accuracy(b["scores"], labels, kk)
        out.update({f"top{kk}_a": ta, f"top{kk}_b": tb, f"top{kk}_diff": tb - ta})
    out.update({"mean_class_a": float(np.nanmean(acc_a)), "mean_class_b": float(np.nanmean(acc_b))})
    diff = acc_b - acc_a
    order = np.lexsort((np.arange(k), -np.nan_to_num(diff, nan=-np.inf)))
    out["per_class"] = [{"index": int(i), "name": class_names[i], "support": int(support[i]),
                         "acc_a": _num(acc_a[i]), "acc_b": _num(acc_b[i]), "diff": _num(diff[i])}
                        for i in order]

    def pair(t, p):
        ca, cb = int(cm_a[t, p]), int(cm_b[t, p])
        status = "improved" if cb < ca else "worsened" if cb > ca else "unchanged"
        return {"true": class_names[t], "predicted": class_names[p], "true_index": t, "predicted_index": p,
                "count_a": ca, "count_b": cb, "rate_a": float(100.0 * ca / support[t]),
                "rate_b": float(100.0 * cb / support[t]), "change": cb - ca, "status": status}

    pairs_a = metrics.confused_pairs(cm_a, top)
    seen = {(t, p) for t, p, _, _ in pairs_a}
    out["pairs"] = [pair(t, p) for t, p, _, _ in pairs_a]
    out["new_pairs"] = [pair(t, p) for t, p, _, _ in metrics.confused_pairs(cm_b, top) if (t, p) not in seen]
    return out


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _signed(x) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def compare_markdown(r: dict, limit: int | None = None) -> str:
    """Markdown text of a :func:`compare` result.

    ``limit``: show only that many per-class gains and that many losses (default: all classes).
    """
    lines = [f"# {r['run_b']} vs baseline {r['run_a']}", "",
             f"- samples: {r['num_samples']}, classes: {r['num_classes']}",
             f"- top-1: {r['top1_a']:.2f} -> {r['top1_b']:.2f} ({r['top1_diff']:+.2f})",
             f"- top-5: {r['top5_a']:.2f} -> {r['top5_b']:.2f} ({r['top5_diff']:+.2f})",
             f"- mean class accuracy: {r['mean_class_a']:.2f} -> {r['mean_class_b']:.2f} "
             f"({r['mean_class_b'] - r['mean_class_a']:+.2f})",
             f"- samples fixed by B: {r['fixed']}, broken by B: {r['broken']}", ""]
    rows = r["per_class"]
    title = "## Per-class accuracy change (B - A), largest gain first"
    if limit is not None and len(rows) > 2 * limit:
        valid = [c for c in rows if c["diff"] is not None]
        gains = [c for c in valid[:limit] if c["diff"] > 0]
        losses = [c for c in valid[-limit:] if c["diff"] < 0]
        title += f" (top {limit} gains and losses; the full table is in the file)"
        rows = gains + losses
    lines += [title, "", "| class | support | A % | B % | change |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {c['name']} | {c['support']} | {_pct(c['acc_a'])} | {_pct(c['acc_b'])} | "
              f"{_signed(c['diff'])} |" for c in rows]

    def pair_table(pairs):
        out = ["| true | predicted as | A count | B count | change | |", "|---|---|---:|---:|---:|---|"]
        return out + [f"| {p['true']} | {p['predicted']} | {p['count_a']} | {p['count_b']} | "
                      f"{p['change']:+d} | {p['status']} |" for p in pairs]

    lines += ["", "## Baseline's most confused pairs (true predicted as), counts in A and B", ""]
    if r["pairs"]:
        lines += pair_table(r["pairs"])
        n_imp = sum(p["status"] == "improved" for p in r["pairs"])
        n_wor = sum(p["status"] == "worsened" for p in r["pairs"])
        lines += ["", f"{n_imp} of {len(r['pairs'])} improved, {n_wor} worsened."]
    else:
        lines.append("The baseline misclassifies nothing.")
    if r["new_pairs"]:
        lines += ["", "## B's most confused pairs that are not among the baseline's", ""]
        lines += pair_table(r["new_pairs"])
    return "\n".join(lines) + "\n"


def compare_command(args) -> None:
    """``skelact compare RUN_A RUN_B [--top N] [--out FILE]``: print the comparison and write it to FILE
    (default: ``RUN_B/compare_<RUN_A's name>.md``)."""
    if args.top < 1:
        raise SkelactError(f"compare: --top must be at least 1, got {args.top}")
    a, b = load_scores(args.run_a), load_scores(args.run_b)
    result = compare(a, b, top=args.top)
    print(compare_markdown(result, limit=args.top), end="")
    if args.out:
        out = Path(args.out)
    else:
        path_a, path_b = Path(args.run_a), Path(args.run_b)
        name_a = (path_a if path_a.is_dir() else path_a.parent).resolve().name or "a"
        safe_a = re.sub(r"[^A-Za-z0-9._-]", "_", name_a)
        out = (path_b if path_b.is_dir() else path_b.parent) / f"compare_{safe_a}.md"
    try:
        atomic_write_text(out, compare_markdown(result))
    except OSError as e:
        print(f"note: could not write {out} ({e.strerror or e})", file=sys.stderr)
        return
    print(f"\nwrote {out}")


def summarize(run_dirs: list[str | Path]) -> list[dict]:
    """Mean ± sample std of test top-1/top-5 over seeds, one row per setup.

    Runs are grouped by everything in their ``summary.json`` that is not the seed (run name without its
    seed suffix, dataset, split, stream, model, heads, epochs, and the ``setup`` hash of the whole config
    less the seed), so results made at different times aggregate and runs differing by any other
    setting do not; a run without ``summary.json`` (unfinished) is refused, and so are two runs of one setup
    with the same seed (e.g. a run and its copy in ``results/``), which would be counted twice.
    """
    import json
    groups: dict[tuple, list[dict]] = {}
    seen: dict[tuple, Path] = {}
    for run in map(Path, run_dirs):
        path = run / "summary.json"
        if not path.is_file():
            raise SkelactError(f"{run}: no summary.json (not a finished run)")
        try:
            s = json.loads(path.read_text())
            if not isinstance(s, dict) or not all(isinstance(s.get(k), (int, float)) for k in ("top1", "top5")):
                raise ValueError("no numeric top1 / top5")
        except (ValueError, UnicodeDecodeError) as e:
            raise SkelactError(f"{path}: unreadable run summary ({e})") from None
        name = re.sub(r"-s\d+(-\d+)?$", "", run.name)
        key = (name, s.get("dataset"), s.get("split"), s.get("stream"), s.get("model"),
               "+".join(s.get("heads") or []) or "-", s.get("epochs"), s.get("setup"))
        if (key, s.get("seed")) in seen:
            raise SkelactError(f"{run}: same setup and seed ({s.get('seed')}) as {seen[key, s.get('seed')]}; "
                               "pass each run once")
        seen[key, s.get("seed")] = run
        groups.setdefault(key, []).append(s)
    names = Counter(key[0] for key in groups)
    rows = []
    for key, runs in groups.items():
        if names[key[0]] > 1:  # one run name, several setups (e.g. a --set override): tell them apart
            key = (f"{key[0]} [{key[-1] or 'no setup id'}]", *key[1:])
        top1 = np.array([r["top1"] for r in runs])
        top5 = np.array([r["top5"] for r in runs])
        std = (lambda a: float(a.std(ddof=1)) if a.size > 1 else float("nan"))
        rows.append(dict(zip(("setup", "dataset", "split", "stream", "model", "heads", "epochs"), key[:7]),
                         seeds=sorted(r.get("seed") for r in runs), n=len(runs),
                         top1_mean=float(top1.mean()), top1_std=std(top1),
                         top5_mean=float(top5.mean()), top5_std=std(top5)))
    return rows


def summarize_command(args) -> None:
    finished = [r for r in args.runs if (Path(r) / "summary.json").is_file()]
    for r in sorted(set(args.runs) - set(finished)):
        print(f"note: skipped {r} (no summary.json: unfinished, or not a run directory)", file=sys.stderr)
    if not finished:
        raise SkelactError("summarize: none of the given directories is a finished run")
    rows = summarize(finished)
    print("| setup | split | stream | heads | epochs | seeds | top-1 % (mean ± std) | top-5 % |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        pm = (lambda m, s: f"{m:.2f} ± {s:.2f}" if not np.isnan(s) else f"{m:.2f} (1 seed)")
        print(f"| {r['setup']} | {r['split']} | {r['stream']} | {r['heads']} | {r['epochs']} | "
              f"{','.join(map(str, r['seeds']))} | {pm(r['top1_mean'], r['top1_std'])} | "
              f"{pm(r['top5_mean'], r['top5_std'])} |")
