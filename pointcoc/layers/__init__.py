"""Layers: context cluster, local grouper, residual pointwise MLP blocks, reducers.

Every layer is channels-last: features (B, N, C) or (B, S, k, C).
"""
from .context_cluster import ContextCluster, context_cluster, context_cluster_dense, record_assignments
from .grouper import GroupIndex, GroupTransfer, Groups, LocalGrouper, masked_std
from .mlp import MaskedBatchNorm, PointwiseLayer, ResidualPointBlock, get_activation
from .pooling import masked_max
from .recompute import keep_norm_statistics, recompute

__all__ = [
    "ContextCluster",
    "context_cluster",
    "context_cluster_dense",
    "record_assignments",
    "LocalGrouper",
    "Groups",
    "GroupIndex",
    "GroupTransfer",
    "masked_std",
    "MaskedBatchNorm",
    "PointwiseLayer",
    "ResidualPointBlock",
    "get_activation",
    "masked_max",
    "recompute",
    "keep_norm_statistics",
]
