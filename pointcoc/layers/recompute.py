"""Recompute instead of store: run a part of a model so that backward recomputes its activations.

A training step of PointMLP keeps every grouped (B, S, k, C) activation of the
pre-extraction blocks for backward. :func:`recompute` keeps only the inputs of
a segment and runs its forward again during backward (activation
checkpointing, ``torch.utils.checkpoint`` without re-entrance). The segment's
BatchNorm layers compute the same batch statistics on the second run; their
running statistics are restored after it, so they are updated once per step,
as without recomputation. The segment must be deterministic (no dropout, no
random sampling): the recomputed activations are then the stored ones, bit for
bit, and so are the gradients.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["recompute", "keep_norm_statistics"]


@contextmanager
def keep_norm_statistics(module: nn.Module) -> Iterator[None]:
    """Inside the block, BatchNorm layers of ``module`` work as usual; on leaving, their running statistics
    (``running_mean``, ``running_var``, ``num_batches_tracked``) are put back to their values on entering."""
    kept = [(buffer, buffer.clone()) for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            for buffer in (m.running_mean, m.running_var, m.num_batches_tracked) if buffer is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in kept:
                buffer.copy_(value)


def recompute(module: nn.Module, fn: Callable, *args):
    """``fn(*args)``, storing only ``args`` for backward when gradients are on; backward recomputes ``fn``.

    Args:
        module: the module whose parameters and BatchNorm layers ``fn`` uses
            (its running statistics are kept through the recomputation).
        fn: a deterministic function of ``args`` (tensors or other values).

    Returns:
        What ``fn(*args)`` returns; without gradients (``torch.no_grad`` or no
        input or parameter needing one) it is simply called, and so it is
        under ``torch.compile``, whose partitioner chooses what to keep and
        what to recompute for the whole graph.
    """
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return fn(*args)
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False,
                      context_fn=lambda: (nullcontext(), keep_norm_statistics(module)))
