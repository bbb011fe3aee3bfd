"""Training-step cost of CTR-GCN + FR-Head (or STD-CL) against CTR-GCN alone, measured interleaved.

    python bench/bench_head_overhead.py                      # NW-UCLA shape, FR-Head and STD-CL
    python bench/bench_head_overhead.py --shape ntu --reps 5

One step = forward (with taps) + CE (+ head loss) + backward + SGD step, batch 16, 2 threads. The
variants alternate step by step after a warm-up, so slow drifts of a shared machine hit all alike;
medians are reported. Also checks that the inference model's parameter count equals the backbone's.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from skelact.heads import create_head
from skelact.models.registry import create_model

SHAPES = {"ucla": ("ucla20", 10, 3, 52, 20, 1), "ntu": ("ntu25", 60, 3, 64, 25, 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=SHAPES, default="ucla")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    layout, k, c, t, v, m = SHAPES[args.shape]
    model = create_model("ctrgcn", layout=layout, num_classes=k, num_persons=m)
    x = torch.randn(args.batch, c, t, v, m)
    y = torch.arange(args.batch) % k
    idx = torch.arange(args.batch)
    taps = model.backbone.tap_shapes(t, v)
    heads = {"none": None,
             "frhead": create_head("frhead", tap_shapes=taps, num_classes=k, num_persons=m),
             "stdcl": create_head("stdcl", tap_shapes=taps, num_classes=k, num_persons=m,
                                  num_samples=args.batch, n_pos=1, n_hard_neg=4, n_rand_neg=4)}
    params = [p for h in heads.values() if h is not None for p in h.parameters()]
    opt = torch.optim.SGD(list(model.parameters()) + params, lr=1e-3, momentum=0.9)

    def step(head):
        logits, feats = model(x, return_features=True)
        loss = F.cross_entropy(logits, y)
        if head is not None:
            loss = loss + head(feats, logits, y, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = {name: [] for name in heads}
    for name, head in heads.items():  # warm-up
        step(head)
    for rep in range(args.reps):
        order = list(heads.items()) if rep % 2 == 0 else list(heads.items())[::-1]
        for name, head in order:
            t0 = time.perf_counter()
            step(head)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["none"])
    print(f"shape {args.shape} {(c, t, v, m)}, batch {args.batch}, {args.reps} interleaved reps")
    print(f"{'variant':<10}{'median step s':>15}{'overhead':>10}")
    for name in heads:
        med = statistics.median(times[name])
        print(f"{name:<10}{med:>15.3f}{100 * (med / base - 1):>9.1f}%")
    n_model = sum(p.numel() for p in model.parameters())
    bare = create_model("ctrgcn", layout=layout, num_classes=k, num_persons=m)
    print(f"inference model parameters: {n_model:,} (backbone + classifier alone: "
          f"{sum(p.numel() for p in bare.parameters()):,}); FR-Head training-only parameters: "
          f"{sum(p.numel() for p in heads['frhead'].parameters()):,}")


if __name__ == "__main__":
    main()
