"""Functional forms of the layers: ``pointcoc.functional.context_cluster`` and its dense reference."""
from .layers.context_cluster import context_cluster, context_cluster_dense
from .layers.pooling import masked_max

__all__ = ["context_cluster", "context_cluster_dense", "masked_max"]
