"""Export a model's eval forward with ``torch.export``: one call that picks the dynamic batch and checks the result.

:func:`export_model` is ``torch.export.export(model.eval(), (xyz, features, lengths), dynamic_shapes=...)``
with the batch dimension shared by the three inputs and marked dynamic, a comparison of the exported
program's logits with the eager ones on the example, and ``torch.export.save`` when a path is given.
:func:`load_exported` is ``torch.export.load(path).module()`` after importing :mod:`pointcoc.models`, which
registers the custom ops (``pointcoc::farthest_point_sample``, ``pointcoc::knn``, the input checks) that the
program calls; ``import pointcoc`` alone does not (it imports its names on first use).

What the program takes: the example's form (as many arguments, None where it has None). Exported with
``lengths`` (recommended; pass ``torch.full((B,), N)`` for full sets), it takes any batch of sets padded to
the example's N points, each of ``lengths[b]`` points, and gives each set's logits as eager mode does;
exported without, it takes full sets of N points only (``lengths`` must then be None). N is fixed at export
(FPS, kNN and the context cluster size their outputs from it); pad to the largest set you need. The input
checks that read values (finite coordinates, lengths in range, sets of at least ``min_points`` points, pixels
on the grid) run inside the program and raise the ValueErrors of eager mode.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
from torch import nn

from ._atomic import check_output_file

__all__ = ["export_model", "load_exported"]


def export_model(model: nn.Module, example_inputs: Sequence[Optional[torch.Tensor]],
                 path: Optional[os.PathLike] = None, dynamic_batch: bool = True, check: bool = True,
                 atol: float = 1e-5, rtol: float = 1e-5) -> torch.export.ExportedProgram:
    """``torch.export`` the eval forward of a pointcoc model.

    Args:
        model: a pointcoc model (any ``model(xyz, features, lengths) -> logits``); exported in eval mode, its
            training flag restored afterwards.
        example_inputs: ``(xyz (B, N, D),)``, ``(xyz, features (B, N, C) or None)`` or
            ``(xyz, features or None, lengths (B,) long or None)``.
        path: where to ``torch.export.save`` the program (``.pt2``); None: not saved. Checked first: a folder,
            a missing or unwritable folder raise ValueError before anything is exported.
        dynamic_batch: the batch size B is a dynamic dimension (the example needs B >= 2: torch.export
            specialises a dimension of size 1); False fixes it to the example's.
        check: run the program on the example and raise a RuntimeError unless its logits match eager mode's
            within ``atol`` / ``rtol``.

    Returns:
        The ``torch.export.ExportedProgram``; ``program.module()(*args)`` gives the logits, with ``args`` of
        the example's form: as many arguments, None where the example has None.
    """
    if path is not None:
        check_output_file(path, "path")  # before the minutes of exporting
    inputs, dynamic_shapes = example_and_dynamic_shapes(example_inputs, dynamic_batch)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            program = torch.export.export(model, inputs, dynamic_shapes=dynamic_shapes)
            if check:
                want = model(*inputs)
                got = program.module()(*inputs)
                if not torch.allclose(got, want, atol=atol, rtol=rtol):
                    diff = (got - want).abs().max().item()
                    raise RuntimeError(f"the exported program's logits differ from eager mode's by up to {diff:.3g} "
                                       f"(atol {atol}, rtol {rtol})")
    finally:
        model.train(was_training)
    if path is not None:
        torch.export.save(program, path)
    return program


def example_and_dynamic_shapes(example_inputs: Sequence[Optional[torch.Tensor]], dynamic_batch: bool):
    """(inputs tuple, ``dynamic_shapes`` for torch.export / torch.onnx, None for a fixed batch) of an example
    ``(xyz, features or None, lengths or None)``; every given tensor shares one batch dimension.

    Raises ValueError for an example of another form, and for a dynamic batch from an example of one set.
    """
    inputs = tuple(example_inputs)
    if not 1 <= len(inputs) <= 3 or not isinstance(inputs[0], torch.Tensor):
        raise ValueError("example_inputs must be (xyz,), (xyz, features) or (xyz, features, lengths) with xyz a "
                         f"(B, N, D) tensor; got {len(inputs)} items")
    xyz = inputs[0]
    if xyz.dim() != 3:
        raise ValueError(f"xyz must have shape (B, N, D); got shape {tuple(xyz.shape)}")
    if not dynamic_batch:
        return inputs, None
    if xyz.shape[0] < 2:
        raise ValueError(f"a dynamic batch needs an example of at least 2 sets (torch.export specialises a size of "
                         f"1); got B = {xyz.shape[0]}. Pass a larger example or dynamic_batch=False")
    batch = torch.export.Dim("batch", min=1)
    return inputs, tuple(None if t is None else {0: batch} for t in inputs)


def load_exported(path: os.PathLike) -> nn.Module:
    """The callable module of a program saved by :func:`export_model` (``torch.export.load(path).module()``).

    Raises FileNotFoundError for a missing file, ValueError for a file that is not such a program.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported program not found: {path}")
    from . import models  # noqa: F401 - registers the custom ops the program calls
    try:
        program = torch.export.load(path)
    except Exception as err:  # torch raises many types for foreign or damaged files
        raise ValueError(f"{path} is not a program saved by export_model ({type(err).__name__}: {err})") from None
    return program.module()
