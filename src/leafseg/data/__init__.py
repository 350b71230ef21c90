"""Datasets, image/mask I/O, the captions.jsonl index, and the procedural synthetic world.

The names below are imported from their modules on first use, so importing one light module of this
package (the ``leafseg data check`` arguments) does not import torch.
"""

from __future__ import annotations

from leafseg.lazy import lazy_exports

_EXPORTS = {  # name -> module of this package that defines it
    "SegmentationDataset": "datasets",
    "build_dataset": "datasets",
    "list_datasets": "datasets",
    "DataError": "io",
    "list_images": "io",
    "pair_images_masks": "io",
    "palette": "io",
    "read_image": "io",
    "read_mask": "io",
    "write_image": "io",
    "write_mask": "io",
    "SPLIT_OFFSETS": "synthetic",
    "Domain": "synthetic",
    "Scene": "synthetic",
    "SyntheticWorld": "synthetic",
    "random_domains": "synthetic",
    "CLASSES": "synthetic_captions",
    "EVAL_SYNONYMS": "synthetic_captions",
    "STUFF": "synthetic_captions",
    "SYNONYMS": "synthetic_captions",
    "THINGS": "synthetic_captions",
    "caption_classes": "synthetic_captions",
    "SyntheticDataset": "synthetic_dataset",
    "SyntheticLayout": "synthetic_layout",
    "load_synthetic": "synthetic_layout",
    "read_captions": "captions",
    "write_captions": "captions",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
