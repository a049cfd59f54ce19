"""The key mapping between pointcoc's PointMLP / PointMLP-CoC state dicts and the authors' published ones.

The authors' module names (``embedding.net.0``, ``local_grouper_list``, ``pre_blocks_list.i.operation.j.fc1``,
...) are the keys of the checkpoints their scripts write. :func:`state_dict_to_pointcoc` turns such a state
dict into one for a pointcoc model (what :func:`pointcoc.load_authors_checkpoint` uses);
:func:`state_dict_from_pointcoc` goes the other way. Both derive the expected keys and shapes from the pointcoc
model's own state dict, so this module needs no copy of the published model; the benchmarks' re-written
published layout (:class:`pointcoc.bench.reference_pointmlp.ReferencePointMLP`) has the same keys.
"""
from __future__ import annotations

import re
from typing import Dict

import torch
from torch import nn

__all__ = ["state_dict_from_pointcoc", "state_dict_to_pointcoc", "reference_key"]


# pointcoc key -> the authors' key, for the parts whose names differ (a regex and its replacement).
_KEY_MAP = [
    (r"^embedding\.linear\.", "embedding.net.0."),
    (r"^embedding\.norm\.", "embedding.net.1."),
    (r"^stages\.(\d+)\.grouper\.", r"local_grouper_list.\1."),
    (r"^stages\.(\d+)\.transfer\.norm\.", r"pre_blocks_list.\1.transfer.net.1."),
    (r"^stages\.(\d+)\.pre_blocks\.(\d+)\.", r"pre_blocks_list.\1.operation.\2."),
    (r"^stages\.(\d+)\.pos_blocks\.(\d+)\.", r"pos_blocks_list.\1.operation.\2."),
    (r"\.net([12])\.linear\.", r".net\1.0."),
    (r"\.net([12])\.norm\.", r".net\1.1."),
    (r"\.fc_sim\.", ".fc1."),
    (r"\.fc_val\.", ".fc_v."),
    (r"\.fc_out\.", ".fc2."),
    (r"\.alpha$", ".sim_alpha"),
    (r"\.beta$", ".sim_beta"),
]


_TRANSFER_WEIGHT = re.compile(r"^stages\.(\d+)\.transfer\.(neighbour|anchor)\.weight$")


def reference_key(key: str) -> str:
    """The authors' (published) name of pointcoc state-dict key ``key`` (see ``_KEY_MAP``).

    The transfer layer's ``neighbour`` and ``anchor`` weights both map to the one
    ``pre_blocks_list.i.transfer.net.0.weight``.
    """
    match = _TRANSFER_WEIGHT.match(key)
    if match:
        return f"pre_blocks_list.{match.group(1)}.transfer.net.0.weight"
    for pattern, repl in _KEY_MAP:
        key = re.sub(pattern, repl, key)
    return key


def _check_published_keys(keys) -> None:
    for key in keys:
        if ".shortcut." in key or ".transfer.neighbour.bias" in key:
            raise ValueError(f"state must come from a model without shortcut layers or transfer bias; got key {key!r}")


def state_dict_from_pointcoc(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Map a pointcoc PointMLP / PointMLP-CoC state dict onto the authors' (published) keys and shapes.

    Renames (see ``_KEY_MAP``): ``embedding.linear`` -> ``embedding.net.0``,
    ``stages.i.grouper`` -> ``local_grouper_list.i``, ``stages.i.pre_blocks.j``
    -> ``pre_blocks_list.i.operation.j``, ``stages.i.pos_blocks.j`` ->
    ``pos_blocks_list.i.operation.j``, ``net1.linear``/``net1.norm`` ->
    ``net1.0``/``net1.1``, context cluster ``fc_sim, fc_val, fc_out, alpha,
    beta`` -> ``fc1, fc_v, fc2, sim_alpha, sim_beta``; the classifier keeps its
    keys. Reshapes: pointwise Linear weights (O, I) -> Conv1d (O, I, 1); the
    grouper's affine (C,) -> (1, 1, 1, C). The transfer layer's two weights
    ``neighbour`` (O, C) and ``anchor`` (O, C) become one Conv1d weight
    (O, 2C, 1), neighbour channels first, as the published concatenation.
    Works only for models built with ``use_xyz=False`` and without shortcut
    layers (the published configuration).
    """
    _check_published_keys(state)
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _TRANSFER_WEIGHT.match(key)
        if match:
            if match.group(2) == "neighbour":
                anchor = state[f"stages.{match.group(1)}.transfer.anchor.weight"]
                out[reference_key(key)] = torch.cat([value, anchor], 1)[..., None]
            continue
        new = reference_key(key)
        if re.search(r"(embedding\.net\.0|net[12]\.0)\.weight$", new):
            value = value[..., None]
        elif new.endswith(("affine_alpha", "affine_beta")):
            value = value.reshape(1, 1, 1, -1)
        out[new] = value
    return out


def _first(items, n: int = 3) -> str:
    items = list(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more


def state_dict_to_pointcoc(state: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Inverse of :func:`state_dict_from_pointcoc`: a state dict in the authors' keys and
    shapes -> a state dict for ``model`` (a pointcoc PointMLP / PointMLP-CoC of the same configuration).

    Every key and shape is checked against what ``model`` expects before anything is converted.

    Raises:
        ValueError: naming the first missing keys, unexpected keys or shape mismatches
            (``key: got (shape), expected (shape)``).
    """
    ours = model.state_dict()
    expected = state_dict_from_pointcoc(ours)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
        raise ValueError(f"state dict has {'; '.join(parts)}")
    wrong = [f"{k}: got {tuple(state[k].shape)}, expected {tuple(v.shape)}"
             for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise ValueError(f"state dict has {len(wrong)} shape mismatches ({_first(wrong)})")
    out: Dict[str, torch.Tensor] = {}
    for key, target in ours.items():
        value = state[reference_key(key)]
        match = _TRANSFER_WEIGHT.match(key)
        if match:
            split = ours[f"stages.{match.group(1)}.transfer.neighbour.weight"].shape[1]
            value = value[:, :split, 0] if match.group(2) == "neighbour" else value[:, split:, 0]
        out[key] = value.reshape(target.shape)
    return out
