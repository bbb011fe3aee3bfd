"""BatchNorm folding for inference: an eval-mode BN is a per-channel affine map ``y = s·x + h`` with
``s = γ / sqrt(σ² + ε)`` and ``h = β - μ·s``, so a BN that follows a linear layer can be merged into
that layer's weight and bias, removing one pass over the activations per BN.

:func:`fold_batchnorm` returns an inference copy of a model. It folds every ``nn.Sequential`` pair
(conv / linear, BN) itself and lets modules with structure of their own fold their BNs through a
``fold_bn()`` method (CTR-GCN's graph convolution and multi-scale temporal block). Other BNs are left
as they are: input BNs, and ST-GCN's BN after its graph aggregation (moved in front of the aggregation,
its constant shift would become a per-joint one). The folded model computes
the same function as the original in eval mode (to float32 rounding) and refuses to train.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Linear)


def bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (C,), of an eval-mode BN."""
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.affine:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.affine:
        shift = shift + bn.bias
    return scale.detach(), shift.detach()


@torch.no_grad()
def fold_linear(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> nn.Module:
    """``scale·layer(x) + shift`` (per output channel) as one layer, modified in place and returned."""
    w = layer.weight  # (C_out, ...)
    w.mul_(scale.view(-1, *[1] * (w.dim() - 1)))
    layer.bias = nn.Parameter(shift.clone() if layer.bias is None else layer.bias * scale + shift)
    return layer


def fold_linear_bn(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """``bn(layer(x))`` as one layer, modified in place and returned."""
    return fold_linear(layer, *bn_affine(bn))


class ChannelAffine(nn.Module):
    """``x·scale + shift`` per channel of a (B, C, T, V) tensor: what is left of a BN that follows no
    linear layer."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.reshape(-1, 1, 1).clone())
        self.register_buffer("shift", shift.reshape(-1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in x's dtype: under autocast fp32 buffers would promote the output (and every later op) to fp32
        return torch.addcmul(self.shift.to(x.dtype), x, self.scale.to(x.dtype))


def _fold_sequentials(module: nn.Module) -> None:
    for seq in module.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            if isinstance(seq[i], _LINEAR) and isinstance(seq[i + 1], _BN):
                fold_linear_bn(seq[i], seq[i + 1])
                seq[i + 1] = nn.Identity()


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with its BatchNorms folded into the preceding layers."""
    model = copy.deepcopy(model).eval()
    for mod in list(model.modules()):
        if hasattr(mod, "fold_bn"):
            mod.fold_bn()
    _fold_sequentials(model)
    model.requires_grad_(False)
    model.bn_folded = True
    return model
