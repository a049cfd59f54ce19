"""Point-set ops: farthest point sampling, k nearest neighbours, gather.

Each op has one signature and several backends chosen at run time; see
:mod:`pointcoc.ops.backends`.
"""
from . import numba_backend, pytorch3d_backend, triton_backend  # noqa: F401  (register the optional backends)
from .backends import available_backends, get_backend, set_backend, use_backend
from .fps import farthest_point_sample
from .gather import gather
from .knn import KNNResult, knn

__all__ = [
    "farthest_point_sample",
    "knn",
    "KNNResult",
    "gather",
    "set_backend",
    "get_backend",
    "use_backend",
    "available_backends",
]
