"""Grouping: batched k-means, the pseudo-mask generator (features -> per-image region masks), and
class-agnostic regions at patch and image resolution (features -> M^L, M^H)."""

from leafseg.grouping.kmeans import KMeansResult, batched_kmeans
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
    "upsample_labels",
]
