"""pointcoc: deep learning on point sets (point clouds and images as sets of pixels)."""
__version__ = "0.1.0"

from . import ops  # noqa: F401

__all__ = ["ops", "__version__"]
