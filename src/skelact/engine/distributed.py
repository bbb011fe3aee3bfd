"""Plain PyTorch DDP, switched on by the environment ``torchrun`` sets (RANK, WORLD_SIZE, ...)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"  # where collective tensors live: cuda:LOCAL_RANK under nccl

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> Dist:
    """Initialise the process group when launched by torchrun; gloo on CPU, nccl on CUDA (each process
    bound to GPU LOCAL_RANK *before* the first collective, which nccl runs on the current device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    if world <= 1:
        return Dist(device=f"cuda:{local_rank}" if device == "cuda" else "cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank,
                f"cuda:{local_rank}" if device == "cuda" else "cpu")


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def broadcast_object(d: Dist, obj):
    """Rank 0's ``obj`` on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_rows(d: Dist, positions: torch.Tensor, rows: torch.Tensor):
    """Collect (positions, rows) from every rank, ordered by position (every row exactly once)."""
    if d.enabled:
        parts = [None] * d.world_size
        dist.all_gather_object(parts, (positions.cpu(), rows.cpu()))
        positions = torch.cat([p for p, _ in parts])
        rows = torch.cat([r for _, r in parts])
    order = torch.argsort(positions)
    return positions[order], rows[order]


def broadcast_state(d: Dist, module: torch.nn.Module, parameters: bool = False) -> None:
    """Copy rank 0's buffers (BatchNorm statistics), and its parameters if asked, to every rank."""
    if d.enabled:
        with torch.no_grad():
            for t in [*module.buffers(), *(module.parameters() if parameters else ())]:
                dist.broadcast(t.data, 0)


def all_reduce_mean(d: Dist, values: list[float]) -> list[float]:
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return (t / d.world_size).tolist()


def all_true(d: Dist, flag: bool) -> bool:
    """True when ``flag`` holds on every rank (so that all ranks take the same branch)."""
    if not d.enabled:
        return flag
    t = torch.tensor([int(flag)], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def cleanup(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
