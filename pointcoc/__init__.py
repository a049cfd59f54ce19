"""pointcoc: deep learning on point sets (point clouds and images as sets of pixels)."""
from . import functional, layers, models, ops  # noqa: F401
from ._version import __version__
from .env import env_report
from .export import export_model, load_exported
from .models import (PointMLP, PointMLPCoC, PointMLPElite, create_model, list_models, load_authors_checkpoint,
                     register_model)

__all__ = [
    "ops",
    "layers",
    "models",
    "functional",
    "PointMLP",
    "PointMLPElite",
    "PointMLPCoC",
    "create_model",
    "list_models",
    "register_model",
    "env_report",
    "load_authors_checkpoint",
    "export_model",
    "load_exported",
    "__version__",
]
