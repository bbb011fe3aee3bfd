"""Data-loading throughput: SkeletonDataset + DataLoader on NW-UCLA training clips (ucla protocol).

    python bench/bench_loader.py [--data ../shared/data/nw_ucla] [--workers 0 2] [--epochs 3]

Builds a temporary store from the NW-UCLA json files (``prepare_ucla`` when available), then times
train-mode epochs (augmentation on, batch 16, shuffled) after one warm-up epoch, per worker count.
Also reports the bare ``ds[i]`` cost without a DataLoader.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from skelact.data.dataset import SkeletonDataset
from skelact.data.store import StoreWriter


def build_store(raw: Path, out: Path) -> Path:
    try:
        from skelact.data.ucla import prepare_ucla
    except ImportError:
        prepare_ucla = None
    if prepare_ucla is not None:
        prepare_ucla(raw, out=out)
        return out
    files = sorted((raw / "all_sqe").glob("*.json"))
    with StoreWriter(out, dataset="nw_ucla", layout="ucla20", class_names=[str(i) for i in range(10)],
                     max_persons=1, splits={"xview": {"column": "view", "train": [1, 2]}}) as w:
        for f in files:
            d = json.loads(f.read_text())
            w.add(f.stem, np.asarray(d["skeletons"], np.float32), int(d["label"]) - 1,
                  view=int(f.stem.split("_v")[1]))
        return w.commit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parents[1]
    ap.add_argument("--data", type=Path, default=here.parent / "shared" / "data" / "nw_ucla")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--stream", default="j")
    args = ap.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = build_store(args.data, Path(tmp) / "ucla")
        print(f"store built in {time.perf_counter() - t0:.1f}s")
        ds = SkeletonDataset(store, split="xview", part="train", protocol="ucla", window=52,
                             stream=args.stream, train=True, seed=0)
        n = len(ds)
        t0 = time.perf_counter()
        for i in range(n):
            ds[i]
        dt = time.perf_counter() - t0
        print(f"ds[i] alone: {n} clips, {dt / n * 1e6:.0f} us/clip, {n / dt:.0f} clips/s")
        for workers in args.workers:
            loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=workers,
                                drop_last=True, persistent_workers=workers > 0)
            for _ in loader:  # warm-up epoch (worker start-up)
                pass
            clips, t0 = 0, time.perf_counter()
            for epoch in range(1, args.epochs + 1):
                ds.set_epoch(epoch)  # with fork workers this only matters for workers=0
                for x, y, idx in loader:
                    clips += x.shape[0]
            dt = time.perf_counter() - t0
            print(f"DataLoader num_workers={workers} batch={args.batch}: {clips} clips in {dt:.2f}s "
                  f"= {clips / dt:.0f} clips/s")


if __name__ == "__main__":
    main()
