"""Backbones (CTR-GCN, ST-GCN), the skeleton graph and the model registry."""

from .fold import fold_batchnorm
from .registry import Recognizer, create_model, list_models, model_options, register_model

__all__ = ["Recognizer", "fold_batchnorm", "create_model", "list_models", "model_options", "register_model"]
