"""Model registry: ``register_model``, ``create_model(name, **overrides)``, ``list_models(pattern)``."""
from __future__ import annotations

import difflib
import fnmatch
import inspect
import typing
from typing import Callable, Dict, List, Optional

from torch import nn

from .model_cfg import default_pretrained_cfg

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

    Raises ValueError for an unknown name, listing close names, and for an argument the model does not take,
    listing the ones it does. The model gets ``model.pretrained_cfg`` (:mod:`pointcoc.models.model_cfg`).
    """
    if name not in _MODELS:
        close = difflib.get_close_matches(str(name), _MODELS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Registered models: {', '.join(sorted(_MODELS))}")
    known = model_arguments(name)
    unknown = sorted(set(overrides) - set(known)) if known is not None else []
    if unknown:
        close = [c for k in unknown for c in difflib.get_close_matches(k, known, n=1, cutoff=0.6)]
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"model {name!r} has no argument {', '.join(map(repr, unknown))}.{hint} "
                         f"Its arguments: {', '.join(known)}")
    model = _MODELS[name](**overrides)
    model.pretrained_cfg = default_pretrained_cfg(name, model)
    return model


def model_arguments(name: str) -> Optional[List[str]]:
    """The keyword arguments the registered model ``name`` accepts: the named parameters of the ``__init__`` of
    its entry point's return class (the first class in its MRO that names them); None when not declared."""
    try:
        cls = typing.get_type_hints(_MODELS[name]).get("return")
    except (NameError, TypeError):
        return None
    if not inspect.isclass(cls):
        return None
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            params = inspect.signature(klass.__init__).parameters.values()
            named = [p.name for p in params if p.name != "self"
                     and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
            if named:
                return named
    return None


def list_models(pattern: Optional[str] = None) -> List[str]:
    """Sorted names of the registered models, optionally filtered by a shell-style ``pattern`` ("*coc*")."""
    names = sorted(_MODELS)
    return names if pattern is None else [n for n in names if fnmatch.fnmatch(n, pattern)]
