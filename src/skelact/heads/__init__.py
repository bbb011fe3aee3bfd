"""Training-only auxiliary heads (removed at inference): FR-Head and STD-CL.

Functional API: :func:`fr_head_loss`, :func:`update_prototypes`, :func:`stdcl_loss`.
Modules: :class:`FRHead`, :class:`STDCLHead`; factory :func:`create_head`.
"""

from .frhead import FRHead, fr_head_loss, sample_sets, update_prototypes
from .registry import create_head, head_options, list_heads
from .stdcl import STDCLHead, stdcl_loss

__all__ = ["FRHead", "STDCLHead", "create_head", "fr_head_loss", "head_options", "list_heads",
           "sample_sets", "stdcl_loss", "update_prototypes"]
