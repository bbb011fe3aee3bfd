"""The multi-level taps shared by the 10-unit GCN backbones (METHODS.md §1.1) and the unit loop."""

from __future__ import annotations

import torch
from torch import nn

TAPS = {"low": 0, "mid": 4, "high": 7, "final": 9}  # tap name -> index of the unit it follows


def run_units(units: nn.ModuleList, x: torch.Tensor, n: int, m: int, taps: bool):
    """x (N·M, C, T, V) through the units -> pooled (N, D) (mean over T, V, then persons) and
    {tap: (N·M, C_s, T_s, V)} when ``taps``."""
    out = {}
    for i, unit in enumerate(units):
        x = unit(x)
        if taps and i in TAPS.values():
            out.update({name: x for name, j in TAPS.items() if j == i})
    return x.mean((2, 3)).view(n, m, -1).mean(1), out
