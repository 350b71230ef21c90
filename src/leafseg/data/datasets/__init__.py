"""Benchmark dataset readers: ``build_dataset(name, root, split)`` -> :class:`SegmentationDataset`.

Names: voc, voc20, context60, context59, coco_object, coco_stuff171, coco_stuff27,
cityscapes, cityscapes27, ade20k, camvid, folder, synthetic (see ``docs/datasets.md``).
"""

# Importing the reader modules (ade20k ... pascal) registers their datasets.
from leafseg.data.datasets import ade20k, camvid, cityscapes, classes, coco, folder, labels, pascal  # noqa: F401
from leafseg.data.datasets.base import SegmentationDataset
from leafseg.data.datasets.registry import build_dataset, dataset_entry, list_datasets, open_layout, register
from leafseg.data.datasets.splits import read_split_file, write_split_file

__all__ = [
    "SegmentationDataset",
    "build_dataset",
    "classes",
    "dataset_entry",
    "labels",
    "list_datasets",
    "open_layout",
    "read_split_file",
    "register",
    "write_split_file",
]
