"""Losses: supervised segmentation (CE, OHEM) and weak-to-strong consistency."""

from leafseg.losses.consistency import complementary_dropout_masks, confident_pixel_loss, pseudo_labels
from leafseg.losses.segmentation import CrossEntropy, OhemCrossEntropy, build_loss, cross_entropy, ohem_keep

__all__ = [
    "CrossEntropy",
    "OhemCrossEntropy",
    "build_loss",
    "complementary_dropout_masks",
    "confident_pixel_loss",
    "cross_entropy",
    "ohem_keep",
    "pseudo_labels",
]
