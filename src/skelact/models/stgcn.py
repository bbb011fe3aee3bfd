"""ST-GCN (Yan et al., AAAI 2018) with a width multiplier; ``width=0.25`` is SkeletonCLR's encoder (§3.1).

Unit: ``y = ReLU(TCN(GCN(x)) + residual(x))`` where GCN is a 1x1 conv C_in -> K·C_out followed by
``out[u] = sum_k sum_v (A_k ⊙ E_k)[u, v] · x_k[v]`` with a learnable edge importance ``E_k`` (init 1), and
TCN is BN, ReLU, 9x1 conv (temporal stride s), BN, Dropout. Channels 64,64,64,64,128(s2),128,128,256(s2),
256 times ``width``, then a last unit to ``hidden_dim`` (256): 1/4 width is 16,16,16,16,32,32,32,64,64,256.
Input BN over V·C channels per person (as the original), initialisation N(0, 0.02) for convs, N(1, 0.02)
for BN weights.

Activations are channels-last, so the 1x1 conv is one GEMM and the graph aggregation is one batched
matmul ``A (U, V·K) @ x (V·K, C)`` per (sample, frame) that lands directly in channels-last layout.
Shapes: N batch, C channels, T frames, V joints, M persons, K = 3 subsets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .taps import TAPS, run_units

WIDTHS = (64, 64, 64, 64, 128, 128, 128, 256, 256)  # units 1-9 at width 1; unit 10 maps to hidden_dim
STRIDES = (1, 1, 1, 1, 2, 1, 1, 2, 1, 1)


def _init(module: nn.Module) -> None:
    for mod in module.modules():
        if isinstance(mod, (nn.Conv2d, nn.Conv1d)):
            nn.init.normal_(mod.weight, 0.0, 0.02)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(mod.weight, 1.0, 0.02)
            nn.init.zeros_(mod.bias)


class STGCNUnit(nn.Module):
    """(B, C_in, T, V) -> (B, C_out, T/s, V); ``A`` (K, V, V) is a buffer, ``importance`` its learnable
    mask (a constant buffer of ones with ``edge_importance=False``)."""

    def __init__(self, c_in, c_out, A, stride=1, residual=True, dropout=0.0, kernel_size=9,
                 edge_importance=True):
        super().__init__()
        k_sub, v, _ = A.shape
        self.register_buffer("A", A.clone())
        if edge_importance:
            self.importance = nn.Parameter(torch.ones_like(A))
        else:
            self.register_buffer("importance", torch.ones_like(A))
        self.gcn = nn.Conv2d(c_in, k_sub * c_out, 1)
        self.tcn = nn.Sequential(
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, (kernel_size, 1), (stride, 1), ((kernel_size - 1) // 2, 0)),
            nn.BatchNorm2d(c_out), nn.Dropout(dropout, inplace=True))
        if not residual:
            self.residual = None
        elif c_in == c_out and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = nn.Sequential(nn.Conv2d(c_in, c_out, 1, (stride, 1)), nn.BatchNorm2d(c_out))

    def graph_conv(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, T, V) -> (B, C_out, T, V): sum_k sum_v (A_k ⊙ E_k)[u, v] (W_k x)[..., v]."""
        b, _, t, v = x.shape
        k_sub = self.A.shape[0]
        y = self.gcn(x.contiguous(memory_format=torch.channels_last))  # (B, K·C, T, V) channels-last
        c = y.shape[1] // k_sub
        a = (self.A * self.importance).permute(1, 2, 0).reshape(v, v * k_sub)  # a[u, (v, k)] = A_k[u, v]
        y = y.permute(0, 2, 3, 1).reshape(b * t, v * k_sub, c)  # a view: rows (v, k), columns c
        y = torch.bmm(a.expand(b * t, -1, -1), y)  # (B·T, U, C)
        return y.view(b, t, v, c).permute(0, 3, 1, 2)

    def forward(self, x):
        y = self.tcn(self.graph_conv(x))
        return F.relu(y if self.residual is None else y + self.residual(x))


class STGCN(nn.Module):
    """ST-GCN backbone: (N, C, T, V, M) -> (pooled (N, hidden_dim), taps {name: (N·M, C_s, T_s, V)}).

    Taps: ``low`` after unit 1, ``mid`` after unit 5 (T/2), ``high`` after unit 8 (T/4), ``final`` after
    unit 10. They are channels-last tensors; use ``reshape`` (not ``view``) to flatten them.
    """

    tap_names = tuple(TAPS)

    def __init__(self, A, num_persons: int = 2, in_channels: int = 3, width: float = 1.0,
                 hidden_dim: int = 256, dropout: float = 0.5, edge_importance: bool = True):
        super().__init__()
        A = torch.as_tensor(A, dtype=torch.float32)
        self.num_joints, self.num_persons, self.in_channels = A.shape[-1], num_persons, in_channels
        self.feature_dim = hidden_dim
        chans = [max(1, round(w * width)) for w in WIDTHS] + [hidden_dim]
        self.channels = tuple(chans)
        self.data_bn = nn.BatchNorm1d(in_channels * self.num_joints)
        c_prev, units = in_channels, []
        for i, (c, s) in enumerate(zip(chans, STRIDES)):
            units.append(STGCNUnit(c_prev, c, A, stride=s, residual=i > 0, dropout=dropout if i > 0 else 0.0,
                                   edge_importance=edge_importance))
            c_prev = c
        self.units = nn.ModuleList(units)
        _init(self)

    def tap_shapes(self, T: int, V: int | None = None) -> dict[str, tuple[int, int, int]]:
        """{tap: (C, T_s, V)} for input clips of T frames (each stride-2 unit maps T to ceil(T/2))."""
        V = V or self.num_joints
        shapes, t = {}, T
        for i, (c, s) in enumerate(zip(self.channels, STRIDES)):
            t = -(-t // s)
            shapes.update({name: (c, t, V) for name, j in TAPS.items() if j == i})
        return shapes

    def forward(self, x: torch.Tensor, taps: bool = True):
        n, c, t, v, m = x.shape
        x = self.data_bn(x.permute(0, 4, 3, 1, 2).reshape(n * m, v * c, t))  # BN over (V, C) per person
        x = x.view(n * m, v, c, t).permute(0, 3, 1, 2).contiguous().permute(0, 3, 1, 2)  # channels-last
        return run_units(self.units, x, n, m, taps)
