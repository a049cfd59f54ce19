"""Trained weights: ``create_model(name, pretrained=...)``, their model cards, and where they are found.

A set of trained weights is two files with the same stem ``<model>.<tag>``:

* ``<model>.<tag>.pt``: the model's ``state_dict`` (tensors only, loaded with ``weights_only=True``);
* ``<model>.<tag>.json``: its model card: the model and its constructor arguments, the SHA-256 of the ``.pt``,
  the data (set, pixel format, test split), the recipe and the exact command that trained it, the seed, the
  accuracy measured on the test split by ``pointcoc evaluate`` and the protocol of that measurement.

Weights are looked for in the package (``pointcoc/weights``, shipped in the wheel) and then in the local cache,
``$POINTCOC_WEIGHTS`` when that variable is set, else ``~/.cache/pointcoc/weights`` (``$XDG_CACHE_HOME``
respected). Nothing is ever downloaded: ``pointcoc export-weights RUN/last.pt --tag NAME`` puts a run of your
own into the cache, measured the same way.

``pretrained`` may be True (the model's default tag: ``DEFAULT_TAGS``), a tag (``"digits"``, or the full
``"pointmlp_coc_pixels_small.digits"``), or a path to a pointcoc checkpoint (``last.pt``) or to a ``.pt`` state
dict. The authors' own ``.pth`` checkpoints go through :func:`pointcoc.load_authors_checkpoint`.
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .._checkpoint_format import CHECKPOINT_FORMAT, check_checkpoint

__all__ = ["WEIGHTS_ENV_VAR", "DEFAULT_TAGS", "weights_dirs", "list_pretrained", "pretrained_card",
           "resolve_pretrained", "load_pretrained", "file_sha256", "check_new_weights", "CARD_KEYS"]

WEIGHTS_ENV_VAR = "POINTCOC_WEIGHTS"
# The tag that pretrained=True picks for a model.
DEFAULT_TAGS = {
    "pointmlp_coc_pixels_small": "digits",
    "pointmlp_coc_pixels": "mnist5k_discrete25",
    "pointmlp_elite": "modelnet40",
}


def cache_dir() -> Path:
    """The local weights cache: ``$POINTCOC_WEIGHTS``, else ``$XDG_CACHE_HOME/pointcoc/weights`` (default
    ``~/.cache/pointcoc/weights``)."""
    env = os.environ.get(WEIGHTS_ENV_VAR)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pointcoc" / "weights"


# What every model card holds (export-weights writes more); a card without one of them is reported as damaged.
CARD_KEYS = ("model", "model_kwargs", "file", "sha256", "data", "metrics")


def shipped_dir() -> Path:
    """The package's own weights folder (``pointcoc/weights``, in the wheel)."""
    return Path(str(resources.files("pointcoc"))) / "weights"


def weights_dirs() -> List[Path]:
    """The folders searched for ``<model>.<tag>.{pt,json}``, in order: the package's, then the local cache."""
    return [shipped_dir(), cache_dir()]


def check_new_weights(full_tag: str, folder, overwrite: bool = False) -> None:
    """Refuse (ValueError) to write weights ``full_tag`` (``<model>.<tag>``) into ``folder`` when the package
    ships weights of that name (the shipped ones are found first, so the new ones would never load), or when
    ``folder`` already holds them and not ``overwrite``."""
    folder = Path(folder).expanduser()
    shipped = shipped_dir() / f"{full_tag}.json"
    if shipped.is_file() and folder.resolve() != shipped_dir().resolve():
        raise ValueError(f"--tag {full_tag.split('.', 1)[1]}: pointcoc ships weights {full_tag!r}, which are "
                         f"found before {folder}, so create_model and `pointcoc weights` would keep giving the "
                         "shipped ones; choose another --tag")
    existing = [p for p in (folder / f"{full_tag}.json", folder / f"{full_tag}.pt") if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"{existing[0]} already exists: pass --overwrite to replace the weights {full_tag!r} in "
                         f"{folder}, or choose another --tag")


def _cards() -> Dict[str, Path]:
    """full tag -> card path; the package's weights win over the cache's of the same name."""
    found: Dict[str, Path] = {}
    for folder in reversed(weights_dirs()):
        if folder.is_dir():
            found.update({p.name[:-len(".json")]: p for p in folder.glob("*.*.json")})
    return found


def list_pretrained(model: Optional[str] = None) -> List[str]:
    """Sorted full tags ``<model>.<tag>`` of the weights found (for ``model`` only, when given)."""
    return sorted(t for t in _cards() if model is None or t.split(".", 1)[0] == model)


def _full_tag(name: str, tag: Union[bool, str]) -> str:
    if tag is True:
        if name not in DEFAULT_TAGS:
            have = ", ".join(list_pretrained()) or "none"
            raise ValueError(f"model {name!r} has no default trained weights; pretrained weights exist for: {have}")
        return f"{name}.{DEFAULT_TAGS[name]}"
    return tag if tag.startswith(f"{name}.") else f"{name}.{tag}"


def pretrained_card(full_tag: str) -> Dict:
    """The model card of ``<model>.<tag>`` (a dict, see the module docstring); ValueError when not found."""
    cards = _cards()
    if full_tag not in cards:
        raise ValueError(f"no trained weights {full_tag!r}. Available: {', '.join(sorted(cards)) or 'none'}. "
                         f"Searched: {', '.join(map(str, weights_dirs()))}. Nothing is downloaded; "
                         f"`pointcoc export-weights` adds your own runs to the cache")
    path = cards[full_tag]
    try:
        card = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"the model card {path} is damaged: not a JSON file ({err})") from None
    missing = [k for k in CARD_KEYS if k not in card] if isinstance(card, dict) else list(CARD_KEYS)
    if missing:
        raise ValueError(f"the model card {path} is damaged: it lacks {', '.join(missing)}")
    card["card_path"] = str(path)
    return card


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _state_from_file(path: Path) -> Tuple[Dict[str, torch.Tensor], Optional[Dict]]:
    """(state_dict, pointcoc checkpoint config or None) of a ``.pt`` file: a pointcoc checkpoint or a state dict."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for foreign or damaged files
        raise ValueError(f"pretrained={str(path)!r}: not a readable torch file ({type(err).__name__}: {err})") from None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        state = check_checkpoint(obj, path)
        return state["model"], state["config"]
    if isinstance(obj, dict) and "net" in obj:
        raise ValueError(f"pretrained={str(path)!r} looks like a checkpoint of the authors' scripts ('net' key); "
                         "load it with pointcoc.load_authors_checkpoint(path, model_name)")
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"pretrained={str(path)!r}: expected a pointcoc checkpoint (last.pt / best.pt) or a state "
                         f"dict of tensors; got {type(obj).__name__}")
    return obj, None


def resolve_pretrained(name: str, pretrained: Union[bool, str, os.PathLike]) -> Tuple[Dict, Dict, Dict]:
    """(state_dict, constructor kwargs, pretrained_cfg entries) for ``create_model(name, pretrained=...)``.

    A tag's ``.pt`` is checked against the SHA-256 of its card before it is read.
    Raises ValueError for an unknown tag, a damaged file, a checkpoint of another model.
    """
    if isinstance(pretrained, os.PathLike) or (isinstance(pretrained, str) and (
            pretrained.endswith((".pt", ".pth")) or os.sep in pretrained)):
        path = Path(pretrained).expanduser()
        if path.is_dir():
            raise ValueError(f"pretrained={str(path)!r} is a folder; give a checkpoint file such as {path / 'last.pt'}")
        if not path.is_file():
            raise FileNotFoundError(f"pretrained={str(path)!r}: file not found")
        state, config = _state_from_file(path)
        kwargs = {}
        if config is not None:
            if config["model"] != name:
                raise ValueError(f"pretrained={str(path)!r} is a checkpoint of model {config['model']!r}, not {name!r}")
            kwargs = dict(config.get("model_kwargs", {}))
        return state, kwargs, {"tag": None, "file": str(path), "sha256": file_sha256(path)}
    if not isinstance(pretrained, (bool, str)):
        raise TypeError(f"pretrained must be True/False, a tag or a path; got {type(pretrained).__name__}")
    full = _full_tag(name, pretrained)
    card = pretrained_card(full)
    if card["model"] != name:
        raise ValueError(f"weights {full!r} are for model {card['model']!r}, not {name!r}")
    weights = Path(card["card_path"]).with_name(card["file"])
    if not weights.is_file():
        raise FileNotFoundError(f"weights {full!r}: {weights} is missing (its card is {card['card_path']})")
    digest = file_sha256(weights)
    if digest != card["sha256"]:
        raise ValueError(f"weights {full!r}: {weights} has SHA-256 {digest}, its card says {card['sha256']}; the "
                         "file is damaged or was replaced")
    state, _ = _state_from_file(weights)
    info = {"tag": full, "file": str(weights), "sha256": digest, "card": card}
    return state, dict(card["model_kwargs"]), info


def load_pretrained(model: nn.Module, state: Dict[str, torch.Tensor], where: str) -> None:
    """``model.load_state_dict(state)`` with a ValueError naming ``where`` when they do not fit."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"the weights of {where} do not fit the model: {err}") from None
