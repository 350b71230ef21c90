"""Pascal VOC 2012 (21 / 20 classes) and Pascal Context (60 / 59 classes), mmseg layouts.

Masks are palette or grey PNGs read as indices. VOC: 0 = background, 1..20 classes,
255 = void. Context (mmseg's converted ``SegmentationClassContext``): 0 = background,
1..59 classes. The 20- and 59-class versions use mmseg's ``reduce_zero_label``.
"""

from __future__ import annotations

from pathlib import Path

from leafseg.data.datasets.classes import CONTEXT59, CONTEXT60, VOC20, VOC21
from leafseg.data.datasets.labels import reduce_zero_label_lut
from leafseg.data.datasets.layout import Layout, Listing, find_root, read_ids, require_dir
from leafseg.data.datasets.registry import register

VOC_TREE = """\
VOCdevkit/VOC2012/                     <- root (or VOCdevkit, or the folder above it)
  JPEGImages/<id>.jpg
  SegmentationClass/<id>.png           # 0 background, 1..20, 255 void
  SegmentationClassAug/<id>.png        # split 'trainaug' only (mmseg voc_aug.py)
  ImageSets/Segmentation/{train,val,trainval}.txt   (+ aug.txt for 'trainaug')"""

CONTEXT_TREE = """\
VOCdevkit/VOC2010/                     <- root (or VOCdevkit, or the folder above it)
  JPEGImages/<id>.jpg
  SegmentationClassContext/<id>.png    # mmseg pascal_context.py output, 0 background, 1..59
  ImageSets/SegmentationContext/{train,val}.txt"""


def _id_pairs(root: Path, ids: list[str], mask_dir: str) -> list[tuple[Path, Path]]:
    return [(root / "JPEGImages" / f"{i}.jpg", root / mask_dir / f"{i}.png") for i in ids]


def _voc_layout(root: Path, mask_dir: str, classes: tuple[str, ...], reduce: bool) -> Layout:
    root = find_root(root, ["JPEGImages", "ImageSets"], ["VOC2012", "VOCdevkit/VOC2012"], VOC_TREE, "Pascal VOC 2012")

    def list_split(split: str) -> Listing:
        sets = root / "ImageSets" / "Segmentation"
        if split == "trainaug":  # mmseg's pascal_voc12_aug: (SegmentationClass, train) + (SegmentationClassAug, aug)
            require_dir(root / "SegmentationClassAug", "SBD-augmented mask", VOC_TREE)
            samples = (_id_pairs(root, read_ids(sets / "train.txt", VOC_TREE), mask_dir)
                       + _id_pairs(root, read_ids(sets / "aug.txt", VOC_TREE), "SegmentationClassAug"))
        else:
            samples = _id_pairs(root, read_ids(sets / f"{split}.txt", VOC_TREE), mask_dir)
        return Listing(samples, name_root=root / "JPEGImages")

    return Layout(root, classes, not reduce, reduce_zero_label_lut() if reduce else None, list_split,
                  name_root=root / "JPEGImages")


@register("voc", "Pascal VOC 2012, 21 classes incl. background; splits train, val, trainval, trainaug")
def voc(root: Path, mask_dir: str = "SegmentationClass") -> Layout:
    """VOC 2012 as stored (no reduction). mask_dir: the mask folder under the root."""
    return _voc_layout(root, mask_dir, VOC21, reduce=False)


@register("voc20", "Pascal VOC 2012 without background (reduce_zero_label), 20 classes")
def voc20(root: Path, mask_dir: str = "SegmentationClass") -> Layout:
    """VOC 2012 with background ignored: 0 -> 255, 1..20 -> 0..19."""
    return _voc_layout(root, mask_dir, VOC20, reduce=True)


def _context_layout(root: Path, classes: tuple[str, ...], reduce: bool) -> Layout:
    root = find_root(root, ["SegmentationClassContext", "ImageSets"], ["VOC2010", "VOCdevkit/VOC2010"],
                     CONTEXT_TREE, "Pascal Context (VOC2010)")

    def list_split(split: str) -> Listing:
        ids = read_ids(root / "ImageSets" / "SegmentationContext" / f"{split}.txt", CONTEXT_TREE)
        return Listing(_id_pairs(root, ids, "SegmentationClassContext"), name_root=root / "JPEGImages")

    return Layout(root, classes, not reduce, reduce_zero_label_lut() if reduce else None, list_split,
                  name_root=root / "JPEGImages")


@register("context60", "Pascal Context, 60 classes incl. background (every unlabelled pixel is background)")
def context60(root: Path) -> Layout:
    """Pascal Context as converted by mmseg, no reduction: 0 background, 1..59 classes."""
    return _context_layout(root, CONTEXT60, reduce=False)


@register("context59", "Pascal Context without background (reduce_zero_label), 59 classes")
def context59(root: Path) -> Layout:
    """Pascal Context with background ignored: 0 -> 255, 1..59 -> 0..58."""
    return _context_layout(root, CONTEXT59, reduce=True)
