"""Model registry (timm's discovery API): ``register_model``, ``create_model(name, **overrides)``,
``list_models(pattern, pretrained)``, ``list_pretrained(pattern)``, ``is_model(name)``."""
from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
import typing
from typing import Callable, Dict, List, Optional, Sequence, Union

from torch import nn

from .model_cfg import default_pretrained_cfg

__all__ = ["register_model", "create_model", "list_models", "list_pretrained", "is_model"]

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` (a function ``**kwargs -> nn.Module``) under ``fn.__name__``."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"a model named {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def create_model(name: str, pretrained: Union[bool, str, "os.PathLike"] = False, features_only: bool = False,
                 out_indices: Union[int, Sequence[int], None] = None, **overrides) -> nn.Module:
    """Build the registered model ``name``; keyword arguments override its configuration.

    ``pretrained`` loads trained weights (:mod:`pointcoc.models.pretrained`): True for the model's default tag,
    a tag (``"digits"``), or a path to a pointcoc checkpoint / state dict; ``name`` may also be spelled
    ``"<model>.<tag>"`` (timm's form), which implies ``pretrained=<tag>``. The model is built with the weights'
    own constructor arguments (classes, channels), then ``overrides``; a ``num_classes`` that differs from the
    weights' gets a new, untrained classifier (``reset_classifier``). Nothing is downloaded.

    Raises ValueError for an unknown name, listing close names, for an argument the model does not take,
    listing the ones it does, and for weights that are missing, damaged or of another model.
    Every model gets ``model.pretrained_cfg`` (:mod:`pointcoc.models.model_cfg`; with the weights' tag, file,
    SHA-256 and card when ``pretrained`` is given).

    ``features_only=True`` returns the model without its head, giving per-stage features
    (:class:`~pointcoc.models.features.PointSetFeatures`: a list of (xyz, features, lengths) per stage of
    ``out_indices``, described by ``feature_info``), after loading ``pretrained`` weights.

    The model is returned in train mode, as every ``nn.Module`` (and timm's ``create_model``): call ``.eval()``
    before inference. :func:`pointcoc.load_authors_checkpoint` follows the same rule.
    """
    if name not in _MODELS and "." in str(name):
        name, tag = str(name).split(".", 1)
        if pretrained not in (False, True, tag):
            raise ValueError(f"create_model({name}.{tag!r}) names the tag {tag!r}; pretrained={pretrained!r} "
                             "contradicts it")
        pretrained = tag
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
    for key, value in overrides.items():  # a bool option given "no", 1 or 0.0 would count by its truth value
        if key in _bool_arguments(name) and not isinstance(value, bool):
            raise ValueError(f"model {name!r}: {key} must be a bool (true or false); got {value!r}")
    if not isinstance(features_only, bool):
        raise ValueError(f"features_only must be a bool; got {features_only!r}")
    if out_indices is not None and not features_only:
        raise ValueError("out_indices selects the stages of a feature model: pass features_only=True with it")
    if pretrained is False or pretrained is None:
        model = _MODELS[name](**overrides)
        model.pretrained_cfg = default_pretrained_cfg(name, model)
        return _as_features(model, out_indices) if features_only else model
    from .pretrained import load_pretrained, resolve_pretrained

    state, kwargs, info = resolve_pretrained(name, pretrained)
    num_classes = overrides.pop("num_classes", None)
    model = _MODELS[name](**{**kwargs, **overrides})
    load_pretrained(model, state, info["tag"] or info["file"])
    if num_classes is not None and num_classes != getattr(model, "num_classes", num_classes):
        if not hasattr(model, "reset_classifier"):
            raise ValueError(f"model {name!r} cannot change num_classes after loading weights")
        model.reset_classifier(num_classes)
    model.pretrained_cfg = {**default_pretrained_cfg(name, model), **info}
    return _as_features(model, out_indices) if features_only else model


def _as_features(model: nn.Module, out_indices) -> nn.Module:
    from .features import PointSetFeatures
    return PointSetFeatures(model, out_indices)


def _bool_arguments(name: str) -> set:
    """Arguments of the registered model ``name`` whose default is a bool (so the value must be one)."""
    for fn in (_MODELS[name], *_init_functions(name)):
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            continue
        found = {p.name for p in params if isinstance(p.default, bool)}
        if found:
            return found
    return set()


def _init_functions(name: str) -> list:
    try:
        cls = typing.get_type_hints(_MODELS[name]).get("return")
    except (NameError, TypeError):
        return []
    return [klass.__init__ for klass in cls.__mro__ if "__init__" in vars(klass)] if inspect.isclass(cls) else []


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


def list_models(pattern: Optional[str] = None, pretrained: bool = False) -> List[str]:
    """Sorted names of the registered models, optionally filtered by a shell-style ``pattern`` ("*coc*").

    ``pretrained=True`` lists the trained weights instead, as timm does: full names ``<model>.<tag>``
    (:func:`list_pretrained`), each usable as ``create_model(name)``.
    """
    if pretrained:
        return list_pretrained(pattern)
    names = sorted(_MODELS)
    return names if pattern is None else [n for n in names if fnmatch.fnmatch(n, pattern)]


def list_pretrained(pattern: Optional[str] = None) -> List[str]:
    """Sorted ``<model>.<tag>`` names of the trained weights found (shipped and cached; `pointcoc weights` shows
    their accuracy), optionally filtered by a shell-style ``pattern`` on that name ("*digits*")."""
    from .pretrained import list_pretrained as found

    names = found()
    return names if pattern is None else [n for n in names if fnmatch.fnmatch(n, pattern)]


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model; a ``<model>.<tag>`` name counts by its model part."""
    return isinstance(name, str) and (name in _MODELS or name.split(".", 1)[0] in _MODELS)
