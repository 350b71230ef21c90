"""Grouping: batched k-means and the pseudo-mask generator (features -> per-image region masks)."""

from leafseg.grouping.kmeans import KMeansResult, batched_kmeans
from leafseg.grouping.pseudo_masks import (
    PixelFeatures,
    PseudoMaskGenerator,
    build_feature_extractor,
    upsample_labels,
)

__all__ = [
    "KMeansResult",
    "PixelFeatures",
    "PseudoMaskGenerator",
    "batched_kmeans",
    "build_feature_extractor",
    "upsample_labels",
]
