"""Grouping: batched k-means, the pseudo-mask generator (features -> per-image region masks),
class-agnostic regions at patch and image resolution (features -> M^L, M^H), and nearest-neighbour tables of
a dataset's images (STEGO's k-NN pairs)."""

from leafseg.grouping.kmeans import KMeansResult, batched_kmeans
from leafseg.grouping.knn import knn_table, nearest_neighbours, pooled_features
from leafseg.grouping.pseudo_masks import (
    PixelFeatures,
    PseudoMaskGenerator,
    build_feature_extractor,
    encoder_input,
    upsample_labels,
)
from leafseg.grouping.regions import RegionGrouper, Regions, assignment_scores, group_regions, kmeans_centroids

__all__ = [
    "KMeansResult",
    "PixelFeatures",
    "PseudoMaskGenerator",
    "RegionGrouper",
    "Regions",
    "assignment_scores",
    "batched_kmeans",
    "build_feature_extractor",
    "encoder_input",
    "group_regions",
    "kmeans_centroids",
    "knn_table",
    "nearest_neighbours",
    "pooled_features",
    "upsample_labels",
]
