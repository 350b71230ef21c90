"""Evaluation: metrics on the device, Hungarian / oracle labelling of clusters, sliding-window inference,
pseudo-masks of a folder scored by the oracle, and reports (overlays, galleries, HTML)."""

from leafseg.eval.background import apply_background, prompt_classes
from leafseg.eval.harness import EvalReport, evaluate
from leafseg.eval.matching import ClusterMetric, hungarian_match, oracle_labels, oracle_miou
from leafseg.eval.methods import (
    KMeansSegmenter,
    MaskClip,
    ModelSegmenter,
    Segmenter,
    build_method,
    load_model,
)
from leafseg.eval.metrics import ConfusionMatrix, confusion_matrix, metrics_from_confusion, miou
from leafseg.eval.pamr import PAMR, pamr
from leafseg.eval.prompts import TEMPLATE_SETS, get_templates, reduce_queries, text_embeddings
from leafseg.eval.protocol import PRESETS, Protocol, get_preset, load_protocol
from leafseg.eval.pseudo_mask_folder import FolderResult, pseudo_mask_folder
from leafseg.eval.sliding import SlidingWindowPredictor, resized_shape, slide_windows

__all__ = [
    "EvalReport",
    "FolderResult",
    "KMeansSegmenter",
    "MaskClip",
    "ModelSegmenter",
    "PAMR",
    "PRESETS",
    "Protocol",
    "Segmenter",
    "TEMPLATE_SETS",
    "apply_background",
    "build_method",
    "evaluate",
    "get_preset",
    "get_templates",
    "load_model",
    "load_protocol",
    "pamr",
    "prompt_classes",
    "pseudo_mask_folder",
    "reduce_queries",
    "text_embeddings",
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
