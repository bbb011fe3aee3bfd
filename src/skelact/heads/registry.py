"""Head registry: ``create_head(name, tap_shapes, num_classes, num_persons, num_samples=None, **kw)``."""

from __future__ import annotations

import inspect
from typing import Mapping

from torch import nn

from ..errors import SkelactError
from .frhead import FRHead
from .stdcl import STDCLHead

_HEADS = {"frhead": FRHead, "stdcl": STDCLHead}
_COMMON = ("tap_shapes", "num_classes", "num_persons", "num_samples")


def list_heads() -> list[str]:
    """Names accepted by :func:`create_head`."""
    return sorted(_HEADS)


def head_options(name: str) -> list[str]:
    """Keyword options of head ``name`` (besides tap_shapes, num_classes, num_persons, num_samples)."""
    if name not in _HEADS:
        raise SkelactError(f"head: unknown head {name!r} (valid: {', '.join(list_heads())})")
    return [p for p in inspect.signature(_HEADS[name]).parameters if p not in _COMMON]


def create_head(name: str, tap_shapes: Mapping[str, tuple], num_classes: int, num_persons: int = 1,
                num_samples: int | None = None, **kw) -> nn.Module:
    """Build a training-only auxiliary head; ``head(feats, logits, labels, index) -> weighted aux loss``.

    ``num_samples`` (bank size) is needed by "stdcl" and ignored by "frhead". Unknown names, unknown
    options and bad option values raise :class:`SkelactError` naming the valid values.
    """
    valid = head_options(name)
    unknown = sorted(set(kw) - set(valid))
    if unknown:
        raise SkelactError(f"head.{unknown[0]}: unknown option for {name} (valid: {', '.join(valid)})")
    if name == "stdcl":
        return STDCLHead(tap_shapes, num_classes, num_persons, num_samples, **kw)
    return _HEADS[name](tap_shapes, num_classes, num_persons, **kw)
