"""Datasets, image/mask I/O, the captions.jsonl index, and the procedural synthetic world."""

from leafseg.data.captions import read_captions, write_captions
from leafseg.data.datasets import SegmentationDataset, build_dataset, list_datasets
from leafseg.data.io import (
    DataError,
    list_images,
    pair_images_masks,
    palette,
    read_image,
    read_mask,
    write_image,
    write_mask,
)
from leafseg.data.synthetic import SPLIT_OFFSETS, Domain, Scene, SyntheticWorld, random_domains
from leafseg.data.synthetic_captions import CLASSES, EVAL_SYNONYMS, STUFF, SYNONYMS, THINGS, caption_classes
from leafseg.data.synthetic_dataset import SyntheticDataset
from leafseg.data.synthetic_layout import SyntheticLayout, load_synthetic

__all__ = [
    "CLASSES",
    "EVAL_SYNONYMS",
    "SPLIT_OFFSETS",
    "STUFF",
    "SYNONYMS",
    "THINGS",
    "DataError",
    "Domain",
    "Scene",
    "SyntheticDataset",
    "SyntheticLayout",
    "SyntheticWorld",
    "SegmentationDataset",
    "build_dataset",
    "list_datasets",
    "caption_classes",
    "list_images",
    "load_synthetic",
    "pair_images_masks",
    "palette",
    "random_domains",
    "read_captions",
    "read_image",
    "read_mask",
    "write_captions",
    "write_image",
    "write_mask",
]
