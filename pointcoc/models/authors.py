"""Load the checkpoints that the authors' training scripts write, into pointcoc's models.

The scripts are ``classification_ScanObjectNN/main.py`` of ma-xu/pointMLP-pytorch (PointMLP,
PointMLP-elite) and ``pointcloud/main.py`` of ma-xu/Context-Cluster (PointMLP-CoC). Their
``save_model`` writes ``{"net": model.state_dict(), "epoch", "acc", "best_test_acc", ...,
"optimizer"}`` to ``last_checkpoint.pth`` / ``best_checkpoint.pth``; on a GPU the model is
wrapped in ``DataParallel``, so every key of ``net`` starts with ``module.``. Their module
names are those of the published model (re-written for the benchmarks as
:class:`pointcoc.bench.reference_pointmlp.ReferencePointMLP`); the key mapping is
:func:`pointcoc.models.authors_keys.state_dict_to_pointcoc`.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .authors_keys import state_dict_to_pointcoc
from .registry import create_model

__all__ = ["load_authors_checkpoint", "authors_state_dict", "AUTHORS_MODELS"]

_PREFIX = "module."
AUTHORS_MODELS = ("pointmlp", "pointmlp_elite", "pointmlp_coc")  # the configurations their scripts train


def authors_state_dict(checkpoint) -> dict:
    """The model state dict inside one of the authors' checkpoints, without the ``module.`` prefix.

    Args:
        checkpoint: a path to a ``.pth`` file, or an already loaded object: the dict of the
            authors' ``save_model`` (weights under ``"net"``) or a bare state dict.

    Raises:
        FileNotFoundError: for a path that is not a file.
        ValueError: for a file torch cannot read, or an object of another form.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        path = Path(checkpoint)
        if path.is_dir():
            raise ValueError(f"checkpoint {path} is a folder; give the checkpoint file (e.g. best_checkpoint.pth)")
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for foreign or damaged files
            raise ValueError(f"checkpoint {path} could not be read ({type(err).__name__}: {err})") from None
    if isinstance(checkpoint, Mapping) and str(checkpoint.get("format", "")).startswith("pointcoc-checkpoint"):
        raise ValueError("this is a pointcoc checkpoint (written by train_scanobjectnn.py / train_pixels.py), not one "
                         "of the authors' scripts: evaluate it with `pointcoc evaluate PATH` (without "
                         "--authors-checkpoint) or load it with pointcoc.engine.load_checkpoint")
    state = checkpoint.get("net") if isinstance(checkpoint, Mapping) and "net" in checkpoint else checkpoint
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError("checkpoint must be a path, the dict of the authors' save_model ({'net': state_dict, "
                         f"'epoch': ..., ...}}) or a state dict of tensors; got {type(checkpoint).__name__}"
                         + (f" with keys {list(checkpoint)[:5]}" if isinstance(checkpoint, Mapping) else ""))
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"checkpoint holds NaN or inf values in {len(bad)} tensor(s), e.g. {bad[:3]}: the run that "
                         "wrote it diverged or the file is damaged")
    if all(k.startswith(_PREFIX) for k in state):
        state = {k[len(_PREFIX):]: v for k, v in state.items()}
    return dict(state)


def _num_classes(state: dict) -> int:
    """Outputs of the last Linear of the classifier (``classifier.N.weight`` with the largest N)."""
    heads = [(int(m.group(1)), v) for k, v in state.items()
             if (m := re.fullmatch(r"classifier\.(\d+)\.weight", k)) and v.dim() == 2]
    if not heads:
        raise ValueError("checkpoint has no classifier weight ('classifier.N.weight'), so num_classes is unknown; "
                         f"is it one of the authors' PointMLP checkpoints? First keys: {list(state)[:5]}")
    return int(max(heads, key=lambda item: item[0])[1].shape[0])


def load_authors_checkpoint(checkpoint, model: str = "pointmlp_coc", **model_kwargs) -> nn.Module:
    """A pointcoc model holding the weights of one of the authors' checkpoints (in train mode, as
    :func:`pointcoc.create_model` returns every model: call ``.eval()`` for inference).

    Args:
        checkpoint: a path or a loaded object, as :func:`authors_state_dict` takes.
        model: registered name: ``"pointmlp"``, ``"pointmlp_elite"`` or ``"pointmlp_coc"``.
        **model_kwargs: override the configuration (e.g. ``embed_dim=16`` for a width that was
            not published). ``num_classes`` defaults to the classifier's outputs in the checkpoint;
            ``fps_skip_near_origin`` defaults to True, the rule of the CUDA FPS the weights were
            trained with.

    Returns:
        The model (parameters and BatchNorm statistics loaded, in the checkpoint's floating
        dtype, on the CPU, train mode). In eval mode its logits for
        ``xyz`` (B, N, 3) are the authors' model's for ``xyz.transpose(1, 2)``, to float rounding
        (exact distance ties in FPS aside: see :func:`pointcoc.ops.farthest_point_sample`).

    Raises:
        FileNotFoundError: a path that is not a file.
        ValueError: an unreadable file, a checkpoint of another form, or one that does not fit
            the model (missing or unexpected keys, shape mismatches; the message names the
            first of them). Nothing is loaded then.
    """
    if model not in AUTHORS_MODELS:
        raise ValueError(f"model must be one of the authors' models {list(AUTHORS_MODELS)}; got {model!r}")
    state = authors_state_dict(checkpoint)
    kwargs = {"fps_skip_near_origin": True, **model_kwargs}
    kwargs.setdefault("num_classes", _num_classes(state))
    net = create_model(model, **kwargs)
    floats = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(floats) == 1:  # hold the checkpoint's values exactly (the authors save float32)
        net = net.to(floats.pop())
    try:
        converted = state_dict_to_pointcoc(state, net)
    except ValueError as err:
        raise ValueError(f"checkpoint does not fit model {model!r} ({kwargs}): {err}") from None
    net.load_state_dict(converted)
    return net
