"""Model registry: ``register_model``, ``create_model(name, **overrides)``, ``list_models(pattern)``."""
from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, Dict, List, Optional

from torch import nn

__all__ = ["register_model", "create_model", "list_models"]

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` (a function ``**kwargs -> nn.Module``) under ``fn.__name__``."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"a model named {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def create_model(name: str, **overrides) -> nn.Module:
    """Build the registered model ``name``; keyword arguments override its configuration.

    Raises ValueError for an unknown name, listing close names.
    """
    if name not in _MODELS:
        close = difflib.get_close_matches(str(name), _MODELS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Registered models: {', '.join(sorted(_MODELS))}")
    return _MODELS[name](**overrides)


def list_models(pattern: Optional[str] = None) -> List[str]:
    """Sorted names of the registered models, optionally filtered by a shell-style ``pattern`` ("*coc*")."""
    names = sorted(_MODELS)
    return names if pattern is None else [n for n in names if fnmatch.fnmatch(n, pattern)]
