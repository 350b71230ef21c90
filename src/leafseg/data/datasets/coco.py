"""COCO-Stuff 164k as COCO-Object (81), COCO-Stuff (171) and STEGO's coarse COCO-Stuff (27).

The raw COCO-Stuff PNGs (``stuffthingmaps_trainval2017``) store category id - 1: things
0..90, stuff 91..181, 255 unlabelled. The converted masks of mmseg
(``<id>_labelTrainIds.png``, 171 classes) and of GroupViT's ``cvt_coco_object.py``
(``<id>_instanceTrainIds.png``, 81 classes) are read as they are; either can instead be
computed on the fly from the raw PNGs with the same mapping (option ``from_raw``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from leafseg.data.datasets.classes import COCO_OBJECT81, COCO_STUFF27, COCO_STUFF171
from leafseg.data.datasets.labels import coco_object_lut, coco_stuff27_lut, coco_stuff171_lut, identity_lut
from leafseg.data.datasets.layout import (
    Layout,
    Listing,
    files_ending,
    find_root,
    layout_error,
    pair_by_name,
    read_ids,
    require_dir,
    split_folder,
)
from leafseg.data.datasets.registry import register

COCO_TREE = """\
coco_stuff164k/                        <- root (or the folder above it; STEGO's cocostuff/ works too)
  images/{train2017,val2017}/<12-digit id>.jpg
  annotations/{train2017,val2017}/<id>.png                   # raw: category id - 1, 255 unlabelled
  annotations/{train2017,val2017}/<id>_labelTrainIds.png     # mmseg coco_stuff164k.py (171 classes)
  annotations/{train2017,val2017}/<id>_instanceTrainIds.png  # cvt_coco_object.py (81 classes)
  curated/{train2017,val2017}/Coco164kFull_Stuff_Coarse.txt  # STEGO's image list (coco_stuff27, optional)"""

SPLITS = {"train": "train2017", "val": "val2017"}
CONVERTED = ("_labelTrainIds", "_instanceTrainIds")
CURATED_LIST = "Coco164kFull_Stuff_Coarse.txt"


def _coco_root(root: Path) -> Path:
    return find_root(root, ["images", "annotations"], ["coco_stuff164k", "cocostuff"], COCO_TREE, "COCO-Stuff 164k")


def _has_converted(ann_dir: Path, ending: str) -> bool:
    """Whether ``ann_dir`` holds any file ending in ``ending`` (stops at the first one)."""
    if not ann_dir.is_dir():
        return False
    with os.scandir(ann_dir) as it:
        return any(e.name.endswith(ending) for e in it)


def _lister(root: Path, suffix: Callable[[Path], str], ids_of: Callable[[str], list[str] | None]):
    """A list_split for images/<split>/<id>.jpg with masks annotations/<split>/<id><suffix>."""

    def list_split(split: str) -> Listing:
        folder = split_folder(split, SPLITS)
        img_dir = require_dir(root / "images" / folder, f"image ({split})", COCO_TREE)
        ann_dir = require_dir(root / "annotations" / folder, f"annotation ({split})", COCO_TREE)
        ending = suffix(ann_dir) + ".png"
        images = files_ending(img_dir, ".jpg")
        ids = ids_of(folder)
        if ids is not None:  # listed ids without an image stay samples: they fail (or are skipped) when read
            images = {i: images.get(i, img_dir / f"{i}.jpg") for i in ids}
        exclude = [] if ending != ".png" else list(CONVERTED)
        masks = files_ending(ann_dir, ending, exclude=exclude)
        if ids is not None:
            masks = {k: v for k, v in masks.items() if k in images}
        listing = pair_by_name(images, masks, lambda k: ann_dir / f"{k}{ending}")
        listing.name_root = img_dir
        return listing

    return list_split


def _converted_or_raw(from_raw: bool | None, ending: str) -> Callable[[Path], str]:
    """Mask suffix chooser: the converted ``ending`` files, or the raw PNGs (auto: converted when present)."""

    def choose(ann_dir: Path) -> str:
        if from_raw is None:
            return ending if _has_converted(ann_dir, ending + ".png") else ""
        if not from_raw and not _has_converted(ann_dir, ending + ".png"):
            raise layout_error(ann_dir, f"no converted masks (*{ending}.png) here; convert the raw PNGs first or "
                               f"pass from_raw=True to compute the labels from them", COCO_TREE)
        return "" if from_raw else ending

    return choose


def _converted_layout(root: Path, from_raw: bool | None, ending: str, classes, raw_lut: np.ndarray,
                      has_background: bool) -> Layout:
    root = _coco_root(root)
    choose = _converted_or_raw(from_raw, ending)
    # A converted file name ends in `ending`.png, a raw one is <id>.png: the encoding follows the file name.
    label_map = {f"{ending}.png": identity_lut(), ".png": raw_lut}
    return Layout(root, classes, has_background, label_map, _lister(root, choose, lambda folder: None),
                  name_root=root / "images")


@register("coco_object", "COCO-Object: 80 COCO things + background (stuff and unlabelled), 81 classes")
def coco_object(root: Path, from_raw: bool | None = None) -> Layout:
    """from_raw: True computes labels from the raw PNGs (thing -> compact id + 1, all else -> 0), False
    reads ``<id>_instanceTrainIds.png``, None (default) uses the converted files when the split has any."""
    return _converted_layout(root, from_raw, "_instanceTrainIds", COCO_OBJECT81, coco_object_lut(), True)


@register("coco_stuff171", "COCO-Stuff 164k, mmseg's 171 classes (80 things + 91 stuff)")
def coco_stuff171(root: Path, from_raw: bool | None = None) -> Layout:
    """from_raw: True maps the raw PNGs to the 171 compact ids, False reads ``<id>_labelTrainIds.png``,
    None (default) uses the converted files when the split has any."""
    return _converted_layout(root, from_raw, "_labelTrainIds", COCO_STUFF171, coco_stuff171_lut(), False)


@register("coco_stuff27", "COCO-Stuff 164k, STEGO's 27 coarse classes (12 thing + 15 stuff groups)")
def coco_stuff27(root: Path, image_list: str | None = None) -> Layout:
    """Raw PNGs mapped to the 27 coarse classes, 255 ignored.

    image_list: None (default) for every image of the split; ``"curated"`` for STEGO's list
    ``curated/<split>2017/Coco164kFull_Stuff_Coarse.txt``; or a path (absolute or relative to the
    root) of a file with one image id per line.
    """
    root = _coco_root(root)

    def ids_of(folder: str) -> list[str] | None:
        if image_list is None:
            return None
        path = root / "curated" / folder / CURATED_LIST if image_list == "curated" else root / image_list
        ids = read_ids(path, COCO_TREE)
        if not ids:
            raise layout_error(path, "image list is empty", COCO_TREE)
        return [Path(i).stem for i in ids]

    return Layout(root, COCO_STUFF27, False, coco_stuff27_lut(), _lister(root, lambda d: "", ids_of),
                  name_root=root / "images")
