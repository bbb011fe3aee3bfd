"""Model registry (timm style): ``@register_model`` factories, ``create_model(name, ...)``, ``list_models()``.

A factory takes ``(layout, num_classes, in_channels, num_persons, **options)`` and returns a
:class:`Recognizer`: a backbone (``forward(x, taps) -> (pooled, taps)``), dropout and a linear classifier.
Training-only heads (FR-Head, STD-CL) live in :mod:`skelact.heads`, never in the Recognizer.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
from torch import nn

from ..errors import SkelactError
from ..layouts import Layout, get_layout
from .ctrgcn import CTRGCN
from .graph import adjacency
from .stgcn import STGCN

_MODELS: dict[str, Callable[..., "Recognizer"]] = {}


def register_model(fn: Callable[..., "Recognizer"]) -> Callable[..., "Recognizer"]:
    """Register a factory under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_options(name: str) -> list[str]:
    """Keyword options of model ``name`` (besides layout, num_classes, in_channels, num_persons)."""
    if name not in _MODELS:
        raise SkelactError(f"model: unknown model {name!r}; known: {', '.join(list_models())}")
    return [p for p in inspect.signature(_MODELS[name]).parameters
            if p not in ("layout", "num_classes", "in_channels", "num_persons")]


class Recognizer(nn.Module):
    """backbone + dropout + Linear: (N, C, T, V, M) -> logits (N, K).

    ``forward(x, return_features=True)`` returns ``(logits, feats)`` with ``feats["pooled"]`` (N, D) and the
    backbone's taps ``feats[name]`` (N·M, C_s, T_s, V) for ``name in backbone.tap_names``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.0,
                 init_std: float | None = None, layout: Layout | None = None):
        super().__init__()
        self.backbone = backbone
        self.layout = layout
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.classifier = nn.Linear(backbone.feature_dim, num_classes)
        std = math.sqrt(2.0 / num_classes) if init_std is None else init_std
        nn.init.normal_(self.classifier.weight, 0.0, std)
        nn.init.zeros_(self.classifier.bias)
        self.config: dict = {}  # filled by create_model: name, layout, num_classes, in_channels, ...

    def train(self, mode: bool = True):
        if mode and getattr(self, "bn_folded", False):
            raise SkelactError("model: this copy has its BatchNorms folded for inference and cannot be "
                               "trained; train the original model")
        return super().train(mode)

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def tap_shapes(self, T: int, V: int | None = None) -> dict[str, tuple[int, int, int]]:
        """{tap: (C, T_s, V)} of ``feats[tap]`` for clips of T frames (what FR-Head heads are sized from);
        computed from the architecture, no forward pass (so no BN statistics are touched)."""
        return self.backbone.tap_shapes(T, V)

    def check_input(self, x: torch.Tensor) -> None:
        bb = self.backbone
        want = f"(N, C={bb.in_channels}, T, V={bb.num_joints}, M={bb.num_persons})"
        if x.dim() != 5:
            raise SkelactError(f"model input: expected a 5-d tensor {want}, got shape {tuple(x.shape)}")
        _, c, t, v, m = x.shape
        where = f"layout {self.layout.name!r}" if self.layout is not None else "the model"
        if v != bb.num_joints:
            raise SkelactError(f"model input: {v} joints, but {where} has {bb.num_joints}; "
                               f"expected {want}, got {tuple(x.shape)}")
        if c != bb.in_channels:
            raise SkelactError(f"model input: {c} channels per joint, the model was built for "
                               f"in_channels={bb.in_channels}; expected {want}, got {tuple(x.shape)}")
        if m != bb.num_persons:
            raise SkelactError(f"model input: {m} persons, the model was built for num_persons="
                               f"{bb.num_persons}; expected {want}, got {tuple(x.shape)}")
        if t < 1:
            raise SkelactError(f"model input: no frames; expected {want}, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, return_features: bool = False):
        self.check_input(x)
        pooled, taps = self.backbone(x, taps=return_features)
        logits = self.classifier(self.drop(pooled))
        if return_features:
            return logits, {"pooled": pooled, **taps}
        return logits


def create_model(name: str, layout: str | Layout = "ntu25", num_classes: int = 60, in_channels: int = 3,
                 num_persons: int = 1, **options) -> Recognizer:
    """Build registered model ``name`` for a skeleton layout; ``options`` go to the factory.
    Unknown names, layouts and options raise :class:`SkelactError` naming the valid values."""
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise SkelactError(f"model.{unknown[0]}: unknown option for {name} (valid: {', '.join(valid)})")
    try:
        layout = get_layout(layout)
    except ValueError as e:
        raise SkelactError(f"model: {e}") from None
    for key, val in dict(num_classes=num_classes, in_channels=in_channels, num_persons=num_persons).items():
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise SkelactError(f"model: {key} must be a positive integer, got {val!r}")
    model = _MODELS[name](layout=layout, num_classes=num_classes, in_channels=in_channels,
                          num_persons=num_persons, **options)
    model.config = dict(name=name, layout=layout.name, num_classes=num_classes, in_channels=in_channels,
                        num_persons=num_persons, options=dict(options))
    return model


@register_model
def ctrgcn(layout, num_classes, in_channels, num_persons, dropout: float = 0.0,
           memory_efficient: bool = False) -> Recognizer:
    """CTR-GCN (METHODS.md §4): 1.45 M parameters at 60 classes on ntu25. ``memory_efficient``: recompute
    conv3's outputs in backward instead of keeping them (less training memory, slower steps)."""
    A = torch.from_numpy(adjacency(layout, "ctrgcn"))
    return Recognizer(CTRGCN(A, num_persons, in_channels, memory_efficient), num_classes, dropout, layout=layout)


@register_model
def stgcn(layout, num_classes, in_channels, num_persons, dropout: float = 0.0, tcn_dropout: float = 0.5,
          width: float = 1.0, hidden_dim: int = 256, edge_importance: bool = True) -> Recognizer:
    """ST-GCN with the original spatial partition; ``width`` scales units 1-9, unit 10 maps to hidden_dim."""
    A = torch.from_numpy(adjacency(layout, "stgcn"))
    bb = STGCN(A, num_persons, in_channels, width=width, hidden_dim=hidden_dim, dropout=tcn_dropout,
               edge_importance=edge_importance)
    return Recognizer(bb, num_classes, dropout, init_std=0.02, layout=layout)


@register_model
def stgcn_quarter(layout, num_classes, in_channels, num_persons, dropout: float = 0.0,
                  tcn_dropout: float = 0.5, hidden_dim: int = 256,
                  edge_importance: bool = True) -> Recognizer:
    """SkeletonCLR / CrosSCLR encoder (§3.1): ST-GCN at 1/4 width, 16,16,16,16,32,32,32,64,64,256."""
    return stgcn(layout, num_classes, in_channels, num_persons, dropout=dropout, tcn_dropout=tcn_dropout,
                 width=0.25, hidden_dim=hidden_dim, edge_importance=edge_importance)
