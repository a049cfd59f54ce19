"""Models and their registry: ``create_model(name, **overrides)``, ``list_models(pattern)``."""
from .classifier import PointSetClassifier
from .pointmlp import PointMLP, PointMLPCoC, PointMLPElite, PointMLPStage
from .registry import create_model, is_model, list_models, list_pretrained, register_model
from . import zoo  # noqa: F401  (registers the named configurations)
from .convnet import ConvNetPixels  # noqa: F401  (registers convnet_pixels_small / convnet_pixels)
from .authors import load_authors_checkpoint

__all__ = ["PointSetClassifier", "PointMLP", "PointMLPElite", "PointMLPCoC", "PointMLPStage", "create_model", "list_models",
           "list_pretrained", "is_model", "register_model", "load_authors_checkpoint"]
