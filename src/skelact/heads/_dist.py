"""Small torch.distributed helpers for the heads (no-ops when no process group is initialised)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when torch.distributed is available and a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks in place (identity without a process group) and return it."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenate each tensor's rows over all ranks, in rank order; per-rank row counts may differ.

    Every tensor has the same first dimension n_r on rank r; returns tensors with Σ_r n_r rows
    (the inputs themselves without a process group). Rows are padded to the largest n_r for the
    collective and trimmed afterwards.
    """
    if not is_distributed():
        return tensors
    world = dist.get_world_size()
    device = tensors[0].device
    n = torch.tensor([tensors[0].shape[0]], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    largest = max(sizes)
    out = []
    for t in tensors:
        padded = torch.cat([t, t.new_zeros((largest - t.shape[0],) + tuple(t.shape[1:]))])
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        out.append(torch.cat([p[:s] for p, s in zip(parts, sizes)]))
    return tuple(out)
