"""Cityscapes (fine annotations) with the 19 train ids, and STEGO's 27-class version.

The 19-class reader takes ``_gtFine_labelTrainIds.png`` (made by cityscapesScripts /
mmseg's converter) where present, else converts ``_gtFine_labelIds.png`` on the fly
through the labelId -> trainId table; the 27-class reader uses labelIds - 7.
"""

from __future__ import annotations

from pathlib import Path

from leafseg.data.datasets.classes import CITYSCAPES19, CITYSCAPES27
from leafseg.data.datasets.labels import cityscapes27_lut, cityscapes_train_id_lut, identity_lut
from leafseg.data.datasets.layout import Layout, Listing, find_root, require_dir
from leafseg.data.datasets.registry import register
from leafseg.errors import ConfigError

CITYSCAPES_TREE = """\
cityscapes/                            <- root (or the folder above it)
  leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
  gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   # optional (converted)"""

IMAGE_END = "_leftImg8bit.png"
TRAIN_IDS, LABEL_IDS = "_gtFine_labelTrainIds.png", "_gtFine_labelIds.png"
MASK_KINDS = ("auto", "labelTrainIds", "labelIds")


def _list(root: Path, split: str, endings: tuple[str, ...]) -> Listing:
    """Images of ``split`` paired with the first existing mask among ``endings`` (the first if none exists)."""
    img_dir = require_dir(root / "leftImg8bit" / split, f"image ({split})", CITYSCAPES_TREE)
    gt_dir = require_dir(root / "gtFine" / split, f"annotation ({split})", CITYSCAPES_TREE)
    images = {p.relative_to(img_dir).as_posix()[: -len(IMAGE_END)]: p for p in img_dir.glob(f"*/*{IMAGE_END}")}
    masks: dict[str, Path] = {}
    for ending in reversed(endings):  # earlier endings win
        for p in gt_dir.glob(f"*/*{ending}"):
            masks[p.relative_to(gt_dir).as_posix()[: -len(ending)]] = p
    samples = [(images[k], masks.get(k, gt_dir / f"{k}{endings[0]}")) for k in sorted(images)]
    unpaired = [masks[k] for k in sorted(set(masks) - set(images))]
    return Listing(samples, unpaired, name_root=img_dir, name_suffix=IMAGE_END[: -len(".png")])


def _root(root: Path) -> Path:
    return find_root(root, ["leftImg8bit", "gtFine"], ["cityscapes"], CITYSCAPES_TREE, "Cityscapes")


@register("cityscapes", "Cityscapes fine, 19 train ids (labelTrainIds, or labelIds converted on the fly)")
def cityscapes(root: Path, masks: str = "auto") -> Layout:
    """masks: ``"auto"`` (labelTrainIds where present, else labelIds), ``"labelTrainIds"`` or ``"labelIds"``."""
    if masks not in MASK_KINDS:
        raise ConfigError(f"cityscapes: masks must be one of {MASK_KINDS}, got {masks!r}")
    endings = {"auto": (TRAIN_IDS, LABEL_IDS), "labelTrainIds": (TRAIN_IDS,), "labelIds": (LABEL_IDS,)}[masks]
    root = _root(root)
    label_map = {TRAIN_IDS: identity_lut(), LABEL_IDS: cityscapes_train_id_lut()}
    return Layout(root, CITYSCAPES19, False, label_map, lambda split: _list(root, split, endings),
                  name_root=root / "leftImg8bit", name_suffix="_leftImg8bit")


@register("cityscapes27", "Cityscapes fine, STEGO's 27 classes (labelIds - 7)")
def cityscapes27(root: Path) -> Layout:
    """labelIds 7..33 -> 0..26, ids below 7 -> 255."""
    root = _root(root)
    return Layout(root, CITYSCAPES27, False, {LABEL_IDS: cityscapes27_lut()},
                  lambda split: _list(root, split, (LABEL_IDS,)), name_root=root / "leftImg8bit",
                  name_suffix="_leftImg8bit")
