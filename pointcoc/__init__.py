"""pointcoc: deep learning on point sets (point clouds and images as sets of pixels).

The public names below are imported on first use (PEP 562), so ``import pointcoc`` does not import torch:
the ``pointcoc`` command starts without it and turns a Ctrl-C at any moment of its start-up into one line
(exit 130). ``from pointcoc import create_model`` or ``pointcoc.ops`` imports what it needs. The custom ops
(``torch.ops.pointcoc.*``) are registered when :mod:`pointcoc.models` is imported: before
``torch.export.load`` of an exported pointcoc model, ``import pointcoc.models`` (or use
:func:`pointcoc.load_exported`).
"""
from typing import TYPE_CHECKING

from ._version import __version__

# public name -> the submodule that defines it ("" for the submodules themselves)
_LAZY = {
    "ops": "", "layers": "", "models": "", "functional": "",
    "PointMLP": "models", "PointMLPElite": "models", "PointMLPCoC": "models", "create_model": "models",
    "list_models": "models", "list_pretrained": "models", "is_model": "models", "register_model": "models",
    "load_authors_checkpoint": "models",
    "env_report": "env",
    "export_model": "export", "load_exported": "export",
}

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
    "list_pretrained",
    "is_model",
    "register_model",
    "env_report",
    "load_authors_checkpoint",
    "export_model",
    "load_exported",
    "__version__",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from . import functional, layers, models, ops  # noqa: F401
    from .env import env_report
    from .export import export_model, load_exported
    from .models import (PointMLP, PointMLPCoC, PointMLPElite, create_model, is_model, list_models, list_pretrained,
                         load_authors_checkpoint, register_model)
del TYPE_CHECKING  # not a public name (dir(pointcoc))


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'pointcoc' has no attribute {name!r}")
    import importlib
    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    value = getattr(module, name) if _LAZY[name] else module
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
