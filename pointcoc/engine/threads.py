"""``--threads``: the number of torch CPU threads of a run, for speed and for bitwise reproducibility.

On the CPU, torch splits reductions (BatchNorm statistics, weight gradients) over its threads, so the
same seed gives bitwise different losses with a different thread count, and a few hundred SGD steps
turn that rounding into different accuracies. A fixed ``--threads`` makes a run independent of
the machine's core count and of ``OMP_NUM_THREADS``.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

__all__ = ["add_threads_arg", "torch_threads"]


def add_threads_arg(parser, default: int = 0) -> None:
    """Add ``--threads N`` (0 = torch's default) to an argparse parser or argument group."""
    parser.add_argument("--threads", type=int, default=default,
                        help="torch CPU threads (torch.set_num_threads); 0 = as many as torch picks (the core count or "
                             "OMP_NUM_THREADS). CPU results are bitwise reproducible only for a fixed thread count "
                             "(default: %(default)s)")


@contextmanager
def torch_threads(threads: int):
    """Run the block with ``torch.set_num_threads(threads)`` (0: unchanged), then restore the previous count.

    Raises:
        ValueError: if ``threads`` < 0.
    """
    if not isinstance(threads, int) or threads < 0:
        raise ValueError(f"--threads must be an int >= 0 (0 = torch's default); got {threads!r}")
    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
