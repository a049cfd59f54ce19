"""Pictures: clustering maps of the context clusters (PNG)."""
from .clusters import ClusterMap, cluster_maps, cluster_maps_figure, colorize_clusters, plot_cluster_maps

__all__ = ["ClusterMap", "cluster_maps", "cluster_maps_figure", "colorize_clusters", "plot_cluster_maps"]
