"""``skelact evaluate``: run a trained model on a split and write the evaluation report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import SkelactError
from . import distributed as ddp
from .checkpoint import build_model, load_checkpoint


def run_dir_of(target: Path) -> Path:
    """The run directory a checkpoint belongs to (its parent's parent), or the target itself."""
    if target.is_dir():
        return target
    return target.parent.parent if target.parent.name == "checkpoints" else target.parent


def evaluate(ckpt: dict, data: str | None = None, split: str | None = None, device: str = "cpu",
             batch_size: int = 64):
    """Scores of a checkpoint's model on the test part of ``split``: (logits, labels, names, store)."""
    from ..data.dataset import SkeletonDataset
    from ..data.store import SkeletonStore
    from torch.utils.data import DataLoader
    from .train import ShardSampler, predict
    info = ckpt["data"]
    store = SkeletonStore(data or info["path"])
    if store.layout.name != info["layout"]:
        raise SkelactError(f"{store.path}: layout {store.layout.name} does not match the model's "
                           f"{info['layout']}")
    if store.class_names != info["class_names"]:
        raise SkelactError(f"{store.path}: class list differs from the one the model was trained on")
    split = split or info["split"]
    test_idx = store.split(split, "test")
    same_store = store.path.resolve() == Path(info["path"]).resolve()
    if same_store and split != info["split"] and info["split"] in store.split_names:
        seen = np.intersect1d(test_idx, store.split(info["split"], "train")).size
        if seen:
            print(f"note: {seen} of {test_idx.size} clips of the {split!r} test part were in the model's "
                  f"training part (split {info['split']!r}): this is not a held-out score", file=sys.stderr)
    ds = SkeletonDataset(store, indices=test_idx, protocol=info["protocol"],
                         window=info["window"], stream=info["stream"], train=False,
                         num_persons=info["num_persons"])
    model = build_model(ckpt).to(device)
    d = ddp.Dist()
    loader = DataLoader(ds, batch_size=batch_size, sampler=ShardSampler(len(ds), d))
    logits, ids = predict(model, loader, torch.device(device), d)
    ids = ids.numpy()
    return logits.numpy(), store.labels[ids], store.names[ids], store, split


def evaluate_command(args) -> None:
    from ..report import build_report, save_scores, write_report
    target = Path(args.target)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SkelactError("--device cuda: no CUDA device is available")
    ckpt = load_checkpoint(target)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    logits, labels, names, store, split = evaluate(ckpt, args.data, args.split, device)
    # a folder of its own: the run's report and scores describe the checkpoint the run selected
    out = run_dir_of(target) / f"eval-{Path(ckpt['path']).stem}-{store.path.name}-{split}"
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(logits, labels, store.class_names, names=names)
    write_report(out, report)
    save_scores(out / "scores.npz", names, labels, logits, store.class_names)
    print(f"{ckpt['path']} on {store.path} split {split} (test, {labels.size} clips): "
          f"top-1 {report['top1']:.2f}%  top-5 {report['top5']:.2f}%")
    print(f"report: {out / 'report.md'}")
    print(json.dumps({"top1": report["top1"], "top5": report["top5"]}))
