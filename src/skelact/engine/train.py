"""The main job: train a recogniser (+ training-only heads), checkpoint every epoch, evaluate, report.

Read top to bottom: resolve the config, build data / model / heads / optimiser, loop over epochs,
write the run directory. DDP is switched on by the environment ``torchrun`` sets; the same code runs
as one CPU process. A killed run continues with ``--resume RUN_DIR`` and ends with the same metrics:
every random draw is keyed by (seed, epoch), so nothing but the last checkpoint is needed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from .. import metrics
from ..errors import SkelactError
from . import distributed as ddp
from ..fileio import atomic_torch_save, atomic_write_text
from .checkpoint import FORMAT, load_checkpoint
from .config import Config, DataConfig, dump, load_config, setup_hash


# ---------------------------------------------------------------------------------------- data
def carve_validation(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over ``labels`` (training positions) marking a stratified validation share."""
    rng = np.random.default_rng([seed, 7])
    order = rng.permutation(labels.size)
    ranked = np.empty(labels.size, dtype=np.int64)  # rank of each position within its class
    sorted_pos = order[np.argsort(labels[order], kind="stable")]
    counts = np.bincount(labels, minlength=labels.max() + 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ranked[sorted_pos] = np.arange(labels.size) - np.repeat(starts, counts)
    n_val = np.floor(counts * fraction + 0.5).astype(np.int64)
    n_val = np.where(counts > 1, np.clip(n_val, 1, counts - 1), 0) if fraction > 0 else n_val * 0
    return ranked < n_val[labels]


def build_data(cfg: Config, d: ddp.Dist):
    """Store, and datasets for train / validation (optional) / test."""
    from ..data.dataset import SkeletonDataset
    from ..data.store import SkeletonStore
    path = Path(cfg.data.path)
    missing = ddp.broadcast_object(d, not (path / "meta.json").is_file())  # rank 0 decides for all
    if missing:
        generate = cfg.data.generate == "synthetic" or (
            cfg.data.generate == "auto" and cfg.data.path == DataConfig.path)
        if not generate:
            raise SkelactError(f"{path}: dataset not found; create it with 'skelact prepare' "
                               f"(or point data.path at a prepared dataset)")
        if d.is_main:
            from ..data.synthetic import prepare_synthetic
            print(f"generating the built-in synthetic dataset at {path} ...")
            prepare_synthetic(out=path, seed=0)
        ddp.barrier(d)
    store = SkeletonStore(path)
    train_idx = store.split(cfg.data.split, "train")
    test_idx = store.split(cfg.data.split, "test")
    if train_idx.size == 0 or test_idx.size == 0:
        raise SkelactError(f"{path}: split {cfg.data.split!r} has an empty train or test part")
    val_idx = np.empty(0, dtype=np.int64)
    if cfg.data.val_fraction > 0:
        is_val = carve_validation(store.labels[train_idx], cfg.data.val_fraction, cfg.seed)
        train_idx, val_idx = train_idx[~is_val], train_idx[is_val]
    common = dict(protocol=cfg.data.protocol, window=cfg.data.window, stream=cfg.data.stream,
                  seed=cfg.seed, num_persons=cfg.data.num_persons or None)
    train = SkeletonDataset(store, indices=train_idx, train=True, repeat=cfg.data.repeat, **common)
    test = SkeletonDataset(store, indices=test_idx, train=False, **common)
    val = SkeletonDataset(store, indices=val_idx, train=False, **common) if val_idx.size else None
    return store, train, val, test


class ShardSampler(Sampler):
    """Positions rank::world of a dataset, without padding: each sample is evaluated exactly once."""

    def __init__(self, n: int, d: ddp.Dist):
        self.positions = list(range(d.rank, n, d.world_size))

    def __iter__(self):
        return iter(self.positions)

    def __len__(self):
        return len(self.positions)


def eval_loader(ds, cfg: Config, d: ddp.Dist, batch_size: int) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, sampler=ShardSampler(len(ds), d),
                      num_workers=cfg.data.workers)


# --------------------------------------------------------------------------------------- model
def build_model_and_heads(cfg: Config, store, train_ds, device):
    from ..heads import create_head
    from ..models.registry import create_model
    spec = dict(name=cfg.model.name, layout=store.layout.name, num_classes=store.num_classes,
                in_channels=train_ds.in_channels, num_persons=train_ds.num_persons,
                options=dict(cfg.model.options))
    try:
        model = create_model(spec["name"], layout=spec["layout"], num_classes=spec["num_classes"],
                             in_channels=spec["in_channels"], num_persons=spec["num_persons"],
                             **spec["options"])
    except (TypeError, ValueError) as e:
        raise SkelactError(f"config: model.options: {e}") from None
    heads = torch.nn.ModuleList()
    if cfg.heads:
        model.eval()  # one dummy forward to read the tap shapes the heads are sized from
        with torch.no_grad():
            x, _, _ = train_ds[0]
            _, feats = model(x[None], return_features=True)
        model.train()
        tap_shapes = {k: tuple(v.shape[1:]) for k, v in feats.items() if v.dim() == 4}
        for h in cfg.heads:
            try:
                heads.append(create_head(h.name, tap_shapes=tap_shapes, num_classes=store.num_classes,
                                         num_persons=train_ds.num_persons,
                                         num_samples=len(train_ds.indices),  # bank slots: training clips
                                         **h.options))
            except (TypeError, ValueError) as e:
                raise SkelactError(f"config: heads option of {h.name!r}: {e}") from None
            note = heads[-1].check_training_labels(store.labels[train_ds.indices]) \
                if hasattr(heads[-1], "check_training_labels") else None
            if note and int(os.environ.get("RANK", "0")) == 0:  # printed once under torchrun
                print(f"note: {note}")
    return model.to(device), heads.to(device), spec


class Objective(torch.nn.Module):
    """Recogniser + training-only heads as one module, so DDP synchronises every parameter.

    ``slot_of`` (len(store),) maps a store index to the clip's position in the training set (-1 for
    other clips): heads with per-sample memory (STD-CL's banks) get one slot per training clip, not one
    per clip of the store."""

    def __init__(self, model, heads, slot_of: torch.Tensor):
        super().__init__()
        self.model, self.heads = model, heads
        self.register_buffer("slot_of", slot_of, persistent=False)

    def forward(self, x, y, idx):
        """x (N, C, T, V, M), y (N,), idx (N,) store indices of training clips -> logits (N, K), CE, aux."""
        if len(self.heads):
            logits, feats = self.model(x, return_features=True)
        else:
            logits, feats = self.model(x), None
        ce = F.cross_entropy(logits.float(), y)
        slots = self.slot_of[idx] if len(self.heads) else None
        aux = sum((h(feats, logits, y, slots) for h in self.heads), torch.zeros((), device=x.device))
        return logits, ce, aux


def lr_at(cfg: Config, epoch: int) -> float:
    """Learning rate of (0-based) ``epoch``: linear warm-up, then step or cosine decay."""
    o = cfg.optim
    if epoch < o.warmup_epochs:
        return o.lr * (epoch + 1) / o.warmup_epochs
    if o.schedule == "cosine":
        span = max(1, o.epochs - o.warmup_epochs)
        return 0.5 * o.lr * (1 + math.cos(math.pi * (epoch - o.warmup_epochs) / span))
    return o.lr * o.gamma ** sum(epoch >= m for m in o.milestones)


# ------------------------------------------------------------------------------------ evaluate
@torch.no_grad()
def predict(model, loader, device, d: ddp.Dist, amp: str = "none"):
    """Logits (N, K) in dataset order and the sample indices (N,), gathered from every rank."""
    model.eval()
    positions, rows, sample_ids = [], [], []
    start = 0
    for x, _, idx in loader:
        with autocast(device, amp):
            logits = model(x.to(device, non_blocking=True)).float()
        rows.append(logits.cpu())
        sample_ids.append(idx)
        positions.append(torch.as_tensor(loader.sampler.positions[start:start + len(idx)]))
        start += len(idx)
    k = rows[0].shape[1] if rows else 0
    pos = torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long)
    out = torch.cat([torch.cat(rows, 0) if rows else torch.zeros(0, k),
                     (torch.cat(sample_ids) if sample_ids else torch.zeros(0)).double()[:, None]], 1)
    _, out = ddp.gather_rows(d, pos, out)
    logits, ids = out[:, :-1], out[:, -1].long()
    bad = ~torch.isfinite(logits).all(1)
    if bad.any():  # NaN rows would otherwise count as correct in rank-based metrics
        raise SkelactError(f"the model gave non-finite scores (NaN/inf) for {int(bad.sum())} of {len(ids)} "
                           f"clips (first: store index {int(ids[bad][0])}); its weights have diverged")
    return logits, ids


def autocast(device, amp: str):
    if amp == "none" or device.type != "cuda":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


# -------------------------------------------------------------------------------------- train
def source_revision(package: Path | None = None) -> str | None:
    """The git commit of the checkout this package runs from (``+dirty`` with uncommitted changes
    anywhere in that checkout, configs included), or None for an installed copy: a site-packages
    folder inside some other repository must not report that repository's commit."""
    package = (package or Path(__file__).parents[1]).resolve()

    def git(*cmd):
        return subprocess.run(["git", *cmd], capture_output=True, text=True, timeout=5,
                              cwd=package).stdout.strip()
    try:
        top = git("rev-parse", "--show-toplevel")
        if not top or (Path(top) / "src" / "skelact").resolve() != package:
            return None
        rev = git("rev-parse", "HEAD")
        return rev + ("+dirty" if rev and git("status", "--porcelain", "--untracked-files=no") else "") or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device, d: ddp.Dist) -> dict:
    from .. import __version__
    return {"skelact": __version__, "git_revision": source_revision(), "python": sys.version.split()[0],
            "torch": torch.__version__, "numpy": np.__version__, "platform": platform.platform(),
            "device": str(device), "cuda": torch.cuda.get_device_name() if device.type == "cuda"
            else None, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "world_size": d.world_size, "argv": sys.argv}


def default_run_dir(cfg: Config) -> Path:
    stem = f"{cfg.name}" + (f"-{cfg.data.stream}" if cfg.data.stream != "j" else "") + f"-s{cfg.seed}"
    out, n = Path("runs") / stem, 2
    while out.exists():
        out, n = Path("runs") / f"{stem}-{n}", n + 1
    return out


def resolve(args) -> tuple[Config, Path, dict | None]:
    """Config, run directory and the checkpoint to resume from (if any), from CLI arguments."""
    if args.resume:
        extra = [f"--{k}" for k in ("config", "set", "epochs", "out", "seed") if getattr(args, k)]
        if extra:
            raise SkelactError(f"--resume continues a run with its own config; drop {', '.join(extra)}")
        out = Path(args.resume)
        if not (out / "config.yaml").is_file():
            raise SkelactError(f"{out}: not a run directory (no config.yaml)")
        if (out / "summary.json").is_file():
            raise SkelactError(f"{out}: this run already finished (summary.json exists)")
        cfg = load_config(str(out / "config.yaml"), [f"device={args.device}"] if args.device else [])
        last = out / "checkpoints" / "last.pt"
        return cfg, out, load_checkpoint(last) if last.is_file() else None
    values = {}
    if args.epochs is not None:
        values.setdefault("optim", {})["epochs"] = args.epochs
    if args.seed is not None:
        values["seed"] = args.seed
    if args.device is not None:
        values["device"] = args.device
    cfg = load_config(args.config, args.set, values)
    if args.out:
        out = Path(args.out)
        if out.exists() and any(out.iterdir()):
            raise SkelactError(f"{out}: run directory exists and is not empty "
                               f"(choose another --out, or --resume it)")
    else:
        out = default_run_dir(cfg)
    return cfg, out, None


def main(args) -> dict:
    cfg, out, resume = resolve(args)
    return train(cfg, out, resume)


def _bank_rows(state: dict, current: dict, store_size: int, train_indices) -> dict:
    """Heads' state from a checkpoint written when per-sample memory (STD-CL's banks) had one row per
    clip of the store, indexed by store index: keep the training clips' rows, in slot order. Other
    states pass unchanged. ``current``: the heads' own state dict (for the expected shapes)."""
    rows = torch.as_tensor(train_indices)

    def old_layout(key, v):
        return (key in current and v.ndim > 0 and v.shape[0] == store_size
                and current[key].shape[0] == len(rows) != store_size)
    return {k: v[rows] if old_layout(k, v) else v for k, v in state.items()}


def train(cfg: Config, out: Path, resume: dict | None = None) -> dict:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SkelactError("config: device=cuda but no CUDA device is available")
    device = torch.device("cuda" if cfg.device == "cuda" or
                          (cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
    d = ddp.setup(device.type)
    device = torch.device(d.device)
    out = Path(ddp.broadcast_object(d, str(out)))  # rank 0's choice of the default run directory
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    store, train_ds, val_ds, test_ds = build_data(cfg, d)
    model, heads, spec = build_model_and_heads(cfg, store, train_ds, device)
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.SGD(params, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                          nesterov=cfg.optim.nesterov, weight_decay=cfg.optim.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16" and device.type == "cuda")
    start_epoch, history, best = 0, [], {"val_top1": -1.0, "epoch": None}
    if resume is not None:
        try:
            model.load_state_dict(resume["model"])
            heads.load_state_dict(_bank_rows(resume["heads"], heads.state_dict(), len(store), train_ds.indices))
            opt.load_state_dict(resume["optimizer"])
            if resume.get("scaler"):
                scaler.load_state_dict(resume["scaler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise SkelactError(f"{resume['path']}: does not match the run's config and data "
                               f"({str(e).strip().splitlines()[0][:200]})") from None
        start_epoch, history, best = resume["epoch"] + 1, resume["history"], resume["best"]

    slot_of = torch.full((len(store),), -1, dtype=torch.long)
    slot_of[torch.as_tensor(train_ds.indices)] = torch.arange(len(train_ds.indices))
    net = Objective(model, heads, slot_of.to(device))
    if d.enabled and cfg.sync_bn:
        ddp.sync_batchnorm(net)
    if d.enabled:  # buffers (BN statistics, prototypes) are kept equal by the heads / synced for eval
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False, find_unused_parameters=bool(cfg.heads))
    if cfg.compile:
        net = torch.compile(net)

    if d.is_main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        if resume is None:
            atomic_write_text(out / "config.yaml", dump(cfg))
        # a run killed after logging an epoch but before its checkpoint re-runs that epoch
        atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        atomic_write_text(out / "env.json", json.dumps(environment(device, d), indent=1))
        print(f"run directory: {out}  ({len(train_ds)} training clips/epoch, {len(test_ds)} test, "
              f"{sum(p.numel() for p in model.parameters()):,} model parameters, "
              f"{'+'.join(h.name for h in cfg.heads) or 'no heads'}, device {device}"
              + (f", {d.world_size} processes" if d.enabled else "") + ")")

    per_rank = max(1, cfg.optim.batch_size // d.world_size)
    sampler = DistributedSampler(train_ds, num_replicas=d.world_size, rank=d.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    train_loader = DataLoader(train_ds, batch_size=per_rank, sampler=sampler,
                              num_workers=cfg.data.workers, drop_last=len(sampler) > per_rank)
    val_loader = eval_loader(val_ds, cfg, d, per_rank * 2) if val_ds is not None else None

    for epoch in range(start_epoch, cfg.optim.epochs):
        t0 = time.time()
        torch.manual_seed(cfg.seed * 100_003 + epoch * 101 + d.rank)  # dropout / head draws
        sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        lr = lr_at(cfg, epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        net.train()
        sums = torch.zeros(4, dtype=torch.float64)  # loss, ce, aux, correct
        seen = 0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", leave=False,
                   disable=not d.is_main, dynamic_ncols=True)
        for x, y, idx in bar:
            x, y, idx = x.to(device, non_blocking=True), y.to(device), idx.to(device)
            with autocast(device, cfg.amp):
                logits, ce, aux = net(x, y, idx)
                loss = ce + aux
            if not ddp.all_true(d, bool(torch.isfinite(loss))):  # every rank stops, none hangs
                raise SkelactError(f"epoch {epoch + 1}: the loss became non-finite "
                                   f"({loss.item()} on rank {d.rank}; try a lower optim.lr)")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            n = y.numel()
            sums += torch.tensor([loss.item() * n, ce.item() * n, aux.item() * n,
                                  (logits.argmax(1) == y).sum().item()], dtype=torch.float64)
            seen += n
            bar.set_postfix(loss=f"{sums[0].item() / seen:.3f}", lr=f"{lr:.3g}")
        stats = ddp.all_reduce_mean(d, (sums / max(seen, 1)).tolist())
        row = {"epoch": epoch + 1, "lr": lr, "loss": stats[0], "ce": stats[1], "aux": stats[2],
               "train_top1": 100.0 * stats[3]}
        if val_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or
                                       epoch + 1 == cfg.optim.epochs):
            ddp.broadcast_state(d, model)
            logits, ids = predict(model, val_loader, device, d, cfg.amp)
            # the report's tie rule, so val_top1 and val_scores.npz agree
            row["val_top1"] = metrics.topk_accuracy(logits.numpy(), store.labels[ids.numpy()], 1)
        row["time_s"] = round(time.time() - t0, 2)
        history.append(row)
        improved = row.get("val_top1", -1.0) > best["val_top1"]  # the same on every rank
        if improved:
            best = {"val_top1": row["val_top1"], "epoch": epoch + 1}
        if d.is_main:
            ckpt = checkpoint_dict(cfg, spec, store, train_ds, model, heads, opt, epoch, history, best)
            ckpt["scaler"] = scaler.state_dict()  # fp16 loss scale ({} when unused)
            if improved:
                atomic_torch_save(ckpt, out / "checkpoints" / "best.pt")
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            atomic_torch_save(ckpt, out / "checkpoints" / "last.pt")
            msg = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in row.items())
            tqdm.write(msg)
        ddp.barrier(d)

    summary = finish(cfg, out, d, device, store, val_ds, test_ds, model, history, best, per_rank)
    ddp.cleanup(d)
    return summary


def checkpoint_dict(cfg, spec, store, train_ds, model, heads, opt, epoch, history, best) -> dict:
    from .config import to_dict
    return {
        "format": FORMAT, "config": to_dict(cfg), "model_spec": spec,
        "data": {"dataset": store.meta["dataset"], "path": str(store.path), "layout": store.layout.name,
                 "class_names": store.class_names, "stream": cfg.data.stream,
                 "protocol": cfg.data.protocol, "window": cfg.data.window, "split": cfg.data.split,
                 "num_persons": train_ds.num_persons},
        "model": model.state_dict(), "heads": heads.state_dict(), "optimizer": opt.state_dict(),
        "epoch": epoch, "history": history, "best": best,
    }


def finish(cfg, out, d, device, store, val_ds, test_ds, model, history, best, per_rank) -> dict:
    """Evaluate on test (final epoch, or the best validation epoch if select=val) and write results."""
    if cfg.select == "val" and best["epoch"] is not None:
        if d.is_main:  # rank 0 wrote best.pt; the other ranks receive its weights below
            model.load_state_dict(load_checkpoint(out / "checkpoints" / "best.pt")["model"])
        ddp.broadcast_state(d, model, parameters=True)
        selected = f"best validation epoch {best['epoch']}"
    else:
        ddp.broadcast_state(d, model)
        selected = f"final epoch {cfg.optim.epochs}"
    logits, ids = predict(model, eval_loader(test_ds, cfg, d, per_rank * 2), device, d, cfg.amp)
    val_scores = None
    if val_ds is not None:
        val_scores = predict(model, eval_loader(val_ds, cfg, d, per_rank * 2), device, d, cfg.amp)
    if not d.is_main:
        return {}
    from ..report import build_report, save_scores, write_report
    labels = store.labels[ids.numpy()]
    names = store.names[ids.numpy()]
    scores = logits.numpy().astype(np.float32)
    save_scores(out / "scores.npz", names, labels, scores, store.class_names)
    if val_scores is not None:
        save_scores(out / "val_scores.npz", store.names[val_scores[1].numpy()],
                    store.labels[val_scores[1].numpy()], val_scores[0].numpy().astype(np.float32),
                    store.class_names)
    report = build_report(scores, labels, store.class_names, names=names)
    write_report(out, report)
    epoch_times = [r["time_s"] for r in history]
    summary = {
        "top1": report["top1"], "top5": report["top5"], "split": cfg.data.split, "part": "test",
        "num_samples": int(labels.size), "dataset": store.meta["dataset"], "data": str(store.path),
        "stream": cfg.data.stream, "model": cfg.model.name, "heads": [h.name for h in cfg.heads],
        "seed": cfg.seed, "setup": setup_hash(cfg), "epochs": cfg.optim.epochs, "selected": selected,
        "val_top1": history[-1].get("val_top1") if history else None,
        "best_val": best if best["epoch"] is not None else None,
        "seconds_per_epoch": round(float(np.mean(epoch_times)), 2) if epoch_times else None,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    print_summary(out, summary, history, report)
    return summary


def print_summary(out, summary, history, report) -> None:
    print(f"\n{'epoch':>5} {'lr':>8} {'loss':>8} {'ce':>8} {'aux':>8} {'train%':>7} {'val%':>6} "
          f"{'sec':>6}")
    for r in history:
        val = f"{r['val_top1']:6.1f}" if "val_top1" in r else f"{'-':>6}"
        print(f"{r['epoch']:>5} {r['lr']:8.4f} {r['loss']:8.4f} {r['ce']:8.4f} {r['aux']:8.4f} "
              f"{r['train_top1']:7.1f} {val} {r['time_s']:6.1f}")
    print(f"\ntest ({summary['split']}, {summary['num_samples']} clips, {summary['selected']}): "
          f"top-1 {summary['top1']:.2f}%  top-5 {summary['top5']:.2f}%")
    pairs = report.get("confused_pairs", [])[:3]
    if pairs:
        print("most confused: " + "; ".join(
            f"{p['true']} -> {p['predicted']} ({p['count']})" for p in pairs))
    print(f"results: {out}/summary.json, report: {out}/report.md")
