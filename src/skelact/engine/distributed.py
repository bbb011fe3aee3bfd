"""Plain PyTorch DDP, switched on by the environment ``torchrun`` sets (RANK, WORLD_SIZE, ...)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm


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


class _SyncBatchNormFn(torch.autograd.Function):
    """Training-mode BatchNorm over the union of every rank's batch, for any device and memory layout.

    Forward: global mean, then global biased variance of the centred input (two all-reduces, two passes:
    as accurate as one process's BatchNorm); running statistics get the unbiased variance, as in
    ``F.batch_norm``. Backward: ``dx = w·invstd·(dy − mean(dy) − x̂·mean(dy·x̂))`` with global means;
    the weight and bias gradients stay local sums, which DDP then averages like every other gradient.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps: float, momentum: float):
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # half precision: statistics in float32
        local = torch.cat([xf.sum(dims), xf.new_tensor([x.numel() / x.shape[1]])])
        dist.all_reduce(local)
        count = float(local[-1])
        mean = local[:-1] / count
        centred = xf - mean.view(shape)
        var = centred.square().sum(dims)
        dist.all_reduce(var)
        var /= count
        invstd = torch.rsqrt(var + eps)
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_((var * count / max(count - 1, 1)).to(running_var.dtype),
                                                alpha=momentum)
        xhat = centred * invstd.view(shape)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.count = count
        y = xhat if weight is None else xhat * weight.to(xf.dtype).view(shape) + bias.to(xf.dtype).view(shape)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        x, weight, mean, invstd = ctx.saved_tensors
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        g = gy.to(mean.dtype)
        xhat = (x.to(mean.dtype) - mean.view(shape)) * invstd.view(shape)
        local = torch.stack([g.sum(dims), (g * xhat).sum(dims)])  # (2, C): Σ dy, Σ dy·x̂ on this rank
        total = local.clone()
        dist.all_reduce(total)
        scale = invstd if weight is None else invstd * weight.to(mean.dtype)
        gx = scale.view(shape) * (g - total[0].view(shape) / ctx.count - xhat * (total[1] / ctx.count).view(shape))
        gw = None if weight is None else local[1].to(weight.dtype)
        gb = None if weight is None else local[0].to(weight.dtype)
        return gx.to(x.dtype), gw, gb, None, None, None, None


class _SyncMixin:
    """Makes a BatchNorm layer synchronise its batch statistics across ranks in training (a plain
    BatchNorm otherwise: in eval mode, or without a process group)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        if self.momentum is None or not self.track_running_stats:
            raise ValueError("sync_bn needs BatchNorm layers with running statistics and a momentum")
        self.num_batches_tracked.add_(1)
        return _SyncBatchNormFn.apply(x, self.weight, self.bias, self.running_mean, self.running_var,
                                      self.eps, self.momentum)


@functools.cache
def _sync_class(cls: type) -> type:
    return type(f"Sync{cls.__name__}", (_SyncMixin, cls), {})


def sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """In place: every BatchNorm layer of ``module`` computes its training statistics over all ranks'
    batches, so DDP trains the model that one process would train on the whole batch.

    The layers keep their class (a subclass is swapped in), parameters, buffers and state-dict keys, so
    optimisers built before, checkpoints and BatchNorm folding are unaffected. (torch.nn.SyncBatchNorm
    does the same on GPUs only.) Returns ``module``.
    """
    for m in module.modules():
        if isinstance(m, _BatchNorm) and not isinstance(m, _SyncMixin):
            m.__class__ = _sync_class(type(m))
    return module


def cleanup(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
