"""Evaluation: metrics on the device, Hungarian / oracle labelling of clusters, sliding-window inference,
and reports (overlays, galleries, HTML)."""

from leafseg.eval.matching import ClusterMetric, hungarian_match, oracle_labels, oracle_miou
from leafseg.eval.metrics import ConfusionMatrix, confusion_matrix, metrics_from_confusion, miou
from leafseg.eval.sliding import SlidingWindowPredictor, resized_shape, slide_windows

__all__ = [
    "ClusterMetric",
    "ConfusionMatrix",
    "SlidingWindowPredictor",
    "confusion_matrix",
    "hungarian_match",
    "metrics_from_confusion",
    "miou",
    "oracle_labels",
    "oracle_miou",
    "resized_shape",
    "slide_windows",
]
