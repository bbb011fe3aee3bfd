"""Self-describing checkpoints: weights plus everything needed to rebuild and use the model.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(..., weights_only=True)``. ``model`` holds only the recogniser (backbone + classifier);
training-only head state (prototypes, memory banks) lives under ``heads``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import SkelactError

FORMAT = "skelact-checkpoint"


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``); any problem becomes a one-line error."""
    path = Path(path)
    if path.is_dir():  # a run directory
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise SkelactError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SkelactError(f"{path}: corrupt or unreadable checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise SkelactError(f"{path}: not a skelact checkpoint")
    ckpt["path"] = str(path)
    return ckpt


def build_model(ckpt: dict) -> torch.nn.Module:
    """The inference model (backbone + classifier, no heads) described by a checkpoint."""
    from ..models.registry import create_model
    spec = ckpt["model_spec"]
    model = create_model(spec["name"], layout=spec["layout"], num_classes=spec["num_classes"],
                         in_channels=spec["in_channels"], num_persons=spec["num_persons"],
                         **spec["options"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise SkelactError(f"{ckpt.get('path', 'checkpoint')}: weights do not match model "
                           f"{spec['name']} ({str(e).splitlines()[0]})") from None
    return model.eval()
