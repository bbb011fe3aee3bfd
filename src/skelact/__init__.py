"""skelact: skeleton-based action recognition with discriminative representation learning."""

__version__ = "0.1.0"


def create_model(*args, **kwargs):
    """Build a registered model; see :func:`skelact.models.registry.create_model`."""
    from .models.registry import create_model as _create
    return _create(*args, **kwargs)
