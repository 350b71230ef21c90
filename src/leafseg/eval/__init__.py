"""Evaluation: metrics on the device, Hungarian / oracle labelling of clusters, sliding-window inference,
and reports (overlays, galleries, HTML).

The names below are imported from their modules on first use, so importing one light module of this
package (the ``leafseg eval`` arguments) does not import torch. ``pamr`` names both a module and its
function: ``from leafseg.eval.pamr import pamr`` is the spelling that always gives the function.
"""

from __future__ import annotations

from leafseg.lazy import lazy_exports

_EXPORTS = {  # name -> module of this package that defines it
    "apply_background": "background",
    "prompt_classes": "background",
    "ClearClip": "clip_methods",
    "DenseClip": "clip_methods",
    "MaskClip": "clip_methods",
    "NaClip": "clip_methods",
    "ProxyClip": "clip_methods",
    "SClip": "clip_methods",
    "EvalReport": "harness",
    "evaluate": "harness",
    "ClusterMetric": "matching",
    "hungarian_match": "matching",
    "oracle_labels": "matching",
    "oracle_miou": "matching",
    "KMeansSegmenter": "methods",
    "ModelSegmenter": "methods",
    "build_method": "methods",
    "load_model": "methods",
    "ConfusionMatrix": "metrics",
    "confusion_matrix": "metrics",
    "metrics_from_confusion": "metrics",
    "miou": "metrics",
    "PAMR": "pamr",
    "pamr": "pamr",
    "TEMPLATE_SETS": "prompts",
    "get_templates": "prompts",
    "reduce_queries": "prompts",
    "text_embeddings": "prompts",
    "PRESETS": "protocol",
    "Protocol": "protocol",
    "get_preset": "protocol",
    "load_protocol": "protocol",
    "recall_at_1": "retrieval",
    "FolderResult": "pseudo_mask_folder",
    "pseudo_mask_folder": "pseudo_mask_folder",
    "Segmenter": "segmenter",
    "SlidingWindowPredictor": "sliding",
    "resized_shape": "sliding",
    "slide_windows": "sliding",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
