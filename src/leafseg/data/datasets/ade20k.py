"""ADE20K SceneParsing (ADEChallengeData2016), 150 classes with mmseg's ``reduce_zero_label``.

Masks are grey PNGs: 0 = other/unlabelled, 1..150 = classes; read as 0 -> 255, v -> v - 1.
Annotations that are already shifted (0..149, 255; e.g. UniMatch's pre-processed files)
are read with ``reduce_zero_label=False``.
"""

from __future__ import annotations

from pathlib import Path

from leafseg.data.datasets.classes import ADE20K150
from leafseg.data.datasets.labels import reduce_zero_label_lut
from leafseg.data.datasets.layout import Layout, Listing, files_ending, find_root, pair_by_name, require_dir
from leafseg.data.datasets.registry import register

ADE_TREE = """\
ADEChallengeData2016/                  <- root (or the folder above it)
  images/{training,validation}/ADE_{train,val}_<8 digits>.jpg
  annotations/{training,validation}/ADE_{train,val}_<8 digits>.png   # 0 other, 1..150
  objectInfo150.txt"""

SPLITS = {"train": "training", "val": "validation"}


@register("ade20k", "ADE20K SceneParsing, 150 classes (reduce_zero_label); splits train/training, val/validation")
def ade20k(root: Path, reduce_zero_label: bool = True) -> Layout:
    """reduce_zero_label: False for annotations already stored as 0..149 with 255 ignored."""
    root = find_root(root, ["images", "annotations"], ["ADEChallengeData2016", "ade/ADEChallengeData2016"],
                     ADE_TREE, "ADE20K")

    def list_split(split: str) -> Listing:
        folder = SPLITS.get(split, split)
        img_dir = require_dir(root / "images" / folder, f"image ({split})", ADE_TREE)
        ann_dir = require_dir(root / "annotations" / folder, f"annotation ({split})", ADE_TREE)
        listing = pair_by_name(files_ending(img_dir, ".jpg"), files_ending(ann_dir, ".png"),
                               lambda k: ann_dir / f"{k}.png")
        listing.name_root = img_dir
        return listing

    return Layout(root, ADE20K150, False, reduce_zero_label_lut() if reduce_zero_label else None, list_split,
                  name_root=root / "images")
