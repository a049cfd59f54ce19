"""ONNX export: ONNX Script translations of pointcoc's custom ops, for ``torch.onnx.export(..., dynamo=True)``.

``torch.onnx.export`` captures the model with ``torch.export`` and translates each node to ONNX; the custom
ops (``pointcoc::farthest_point_sample``, ``pointcoc::knn``, ``pointcoc::check_point_inputs``,
``pointcoc::check_pixel_grid``) have no ONNX counterpart, so :data:`ONNX_TRANSLATIONS` gives one for each:

- kNN: all pairwise squared distances (B, M, N) (summed x, then y, then z, as the torch reference), padded
  points at inf, ``TopK`` of the smallest; k columns of inf appended so that k may exceed N; missing
  neighbours -1 / inf, as the op. Memory O(B·M·N) (the torch op works in chunks).
- FPS: the reference loop, unrolled: about a dozen nodes per sample (PointMLP on 1024 points: 960 samples,
  about 12,000 nodes). Start at index 0 (eval mode; ``random_start`` is refused), padding never picked,
  ties to the lowest index, ``skip_near_origin`` as the torch backend.
- The input checks: identity. An ONNX graph cannot raise, so the ONNX model does **not** check its input
  (NaN coordinates, lengths out of range, sets smaller than ``min_points``, off-grid pixels give wrong
  numbers, not errors). Check inputs before calling it.

:func:`export_onnx` calls ``torch.onnx.export`` with this table (needs the ``onnx`` and ``onnxscript``
packages: ``pip install "pointcoc[export]"``; ``onnxruntime`` runs the result).
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import torch
from torch import nn

from .export import example_and_dynamic_shapes

__all__ = ["export_onnx", "onnx_translations"]


def _ops():
    try:
        from onnxscript import opset18  # its dependencies include numpy
    except ImportError as err:  # optional dependency
        raise ImportError("ONNX export needs the packages onnx and onnxscript (pip install \"pointcoc[export]\")") \
            from err
    return opset18


def _ints(op, values):
    return op.Constant(value_ints=list(values))


def _range(op, x, axis: int):
    """int64 (size of x along axis,) = 0, 1, ..."""
    size = op.Squeeze(op.Shape(x, start=axis, end=axis + 1), _ints(op, [0]))
    return op.Range(op.Constant(value_int=0), size, op.Constant(value_int=1))


def _dist2(op, a, b, dims: int):
    """Squared distances of broadcastable a, b (..., D), summed x, then y, then z -> (...)."""
    diff = op.Sub(a, b)
    out = None
    for d in range(dims):
        c = op.Gather(diff, op.Constant(value_int=d), axis=-1)
        sq = op.Mul(c, c)
        out = sq if out is None else op.Add(out, sq)
    return out


def onnx_translations(coord_dim: int = 3) -> dict:
    """``{custom op: ONNX Script function}`` for ``torch.onnx.export(custom_translation_table=...)``.

    ``coord_dim`` (D, 2 or 3) is the coordinate dimension of the model's points (ONNX Script functions are
    traced with unknown shapes, and the distances are summed coordinate by coordinate).
    """
    op = _ops()
    import numpy as np
    import onnx_ir as ir

    def knn(query, points, k: int, query_lengths, point_lengths, backend: Optional[str] = None):
        d2 = _dist2(op, op.Unsqueeze(query, _ints(op, [2])), op.Unsqueeze(points, _ints(op, [1])), coord_dim)
        inf = op.CastLike(op.Constant(value_float=math.inf), d2)
        padded = op.GreaterOrEqual(op.Reshape(_range(op, points, 1), _ints(op, [1, 1, -1])),
                                   op.Reshape(point_lengths, _ints(op, [-1, 1, 1])))
        d2 = op.Where(padded, inf, d2)
        extra = op.Expand(inf, op.Concat(op.Shape(d2, start=0, end=2), _ints(op, [k]), axis=0))
        vals, idx = op.TopK(op.Concat(d2, extra, axis=2), _ints(op, [k]), axis=-1, largest=0, sorted=1)
        padded_query = op.GreaterOrEqual(op.Reshape(_range(op, query, 1), _ints(op, [1, -1, 1])),
                                         op.Reshape(query_lengths, _ints(op, [-1, 1, 1])))
        missing = op.Or(op.IsInf(vals), padded_query)
        return op.Where(missing, inf, vals), op.Where(missing, op.Constant(value_int=-1), idx)

    def fps(xyz, n_samples: int, lengths, random_start: bool, backend: Optional[str] = None,
            skip_near_origin: bool = False):
        if random_start:
            raise ValueError("ONNX export of FPS needs random_start=False (export the model in eval mode)")
        points = _range(op, xyz, 1)
        excluded = op.GreaterOrEqual(op.Unsqueeze(points, _ints(op, [0])), op.Unsqueeze(lengths, _ints(op, [1])))
        zero = op.CastLike(op.Constant(value_float=0.0), xyz)
        if skip_near_origin:
            norm2 = op.Cast(_dist2(op, xyz, zero, coord_dim), to=11)  # compared in float64, as the torch backend
            threshold = op.Constant(value=ir.tensor(np.array(1e-3, dtype=np.float64)))
            excluded = op.Or(excluded, op.LessOrEqual(norm2, threshold))
        start = op.CastLike(op.Constant(value_float=1e10 if skip_near_origin else math.inf), xyz)
        min_d2 = op.Where(excluded, op.CastLike(op.Constant(value_float=-1.0), xyz),
                          op.Expand(start, op.Shape(excluded)))
        farthest = op.Mul(lengths, op.Constant(value_int=0))
        gather_shape = op.Concat(op.Shape(xyz, start=0, end=1), _ints(op, [1, coord_dim]), axis=0)
        picks = []
        for i in range(n_samples):
            pick = op.Where(op.Greater(lengths, op.Constant(value_int=i)), farthest, op.Constant(value_int=-1))
            picks.append(op.Unsqueeze(pick, _ints(op, [1])))
            if i + 1 == n_samples:
                break
            index = op.Expand(op.Reshape(farthest, _ints(op, [-1, 1, 1])), gather_shape)
            chosen = op.GatherElements(xyz, index, axis=1)  # (B, 1, D)
            min_d2 = op.Min(min_d2, _dist2(op, xyz, chosen, coord_dim))
            farthest = op.ArgMax(min_d2, axis=1, keepdims=0, select_last_index=0)
        return picks[0] if n_samples == 1 else op.Concat(*picks, axis=1)

    def check_point_inputs(xyz, features, lengths, min_points: int):
        return op.Identity(xyz)

    def check_pixel_grid(xyz, features, lengths, height: int, width: int):
        return op.Identity(xyz)

    return {
        torch.ops.pointcoc.knn.default: knn,
        torch.ops.pointcoc.farthest_point_sample.default: fps,
        torch.ops.pointcoc.check_point_inputs.default: check_point_inputs,
        torch.ops.pointcoc.check_pixel_grid.default: check_pixel_grid,
    }


def export_onnx(model: nn.Module, example_inputs: Sequence[Optional[torch.Tensor]], path: os.PathLike,
                dynamic_batch: bool = True, **kwargs):
    """``torch.onnx.export(model.eval(), example_inputs, path, dynamo=True)`` with pointcoc's op translations.

    Args:
        model: a pointcoc model; exported in eval mode (its training flag restored afterwards).
        example_inputs: ``(xyz, features or None, lengths or None)`` as for :func:`pointcoc.export_model`
            (give ``lengths`` to export the ragged form; N is fixed, the batch dynamic).
        path: the ``.onnx`` file to write.
        dynamic_batch: the batch size is a dynamic dimension (the example needs B >= 2).
        **kwargs: passed to ``torch.onnx.export`` (``opset_version``, ``verify``, ...).

    Returns:
        The ``torch.onnx.ONNXProgram``. The ONNX inputs are named ``xyz``, ``features``, ``lengths`` (those
        the example gives); the output is the logits. The ONNX model does not check its input (see the
        module docstring).
    """
    inputs, dynamic_shapes = example_and_dynamic_shapes(example_inputs, dynamic_batch)
    xyz = inputs[0]
    kwargs.setdefault("verbose", False)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            program = torch.onnx.export(model, inputs, dynamo=True, dynamic_shapes=dynamic_shapes,
                                        custom_translation_table=onnx_translations(xyz.shape[-1]), **kwargs)
    finally:
        model.train(was_training)
    program.save(str(path))
    return program
