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


def _row_counts(n: int, device) -> list[int]:
    t = torch.tensor([n], dtype=torch.long, device=device)
    parts = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    return [int(p) for p in parts]


def _gather(t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Rows of ``t`` from every rank, in rank order (padded to the largest count for the collective)."""
    largest = max(sizes)
    padded = torch.cat([t, t.new_zeros((largest - t.shape[0],) + tuple(t.shape[1:]))]).contiguous()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def all_gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenate each tensor's rows over all ranks, in rank order; per-rank row counts may differ.

    Every tensor has the same first dimension n_r on rank r; returns tensors with Σ_r n_r rows
    (the inputs themselves without a process group). No gradient: see :func:`gather_rows_with_grad`.
    """
    if not is_distributed():
        return tensors
    sizes = _row_counts(tensors[0].shape[0], tensors[0].device)
    return tuple(_gather(t, sizes) for t in tensors)


class _GatherRowsWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        sizes = _row_counts(t.shape[0], t.device)
        rank = dist.get_rank()
        ctx.rows = (sum(sizes[:rank]), sizes[rank])
        return _gather(t, sizes)

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        start, n = ctx.rows
        return g[start:start + n]


def gather_rows_with_grad(t: torch.Tensor) -> torch.Tensor:
    """:func:`all_gather_rows` of one tensor, differentiable: (n_r, ...) -> (Σ_r n_r, ...).

    When every rank computes the same loss L from the gathered rows (a batch-level loss over the global
    batch), backward gives this rank's rows Σ_ranks ∂L/∂rows = world_size · ∂L/∂rows, the scale of a
    per-rank loss under DDP, whose gradient averaging then yields exactly ∂L/∂θ of one process that saw
    the whole batch. Every rank must call it (and run backward) in the same order.
    """
    return _GatherRowsWithGrad.apply(t) if is_distributed() else t
