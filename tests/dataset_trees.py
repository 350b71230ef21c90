"""Small fixture trees in each benchmark's download layout, for end-to-end evaluation tests.

``make_tree(name, top)`` writes two images with masks for dataset ``name`` under ``top`` and returns
the keyword arguments for ``build_dataset`` (root, split and options). Mask values are drawn from
the values the real files hold, so every reader's label mapping is exercised.
"""

from pathlib import Path

import numpy as np

from leafseg.data import SyntheticWorld
from leafseg.data.io import palette, write_image, write_mask

H, W = 24, 32


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _mask(values, seed: int) -> np.ndarray:
    """(H, W) uint8: blocks of 4x4 pixels with values drawn from ``values``."""
    blocks = np.random.default_rng(100 + seed).choice(np.asarray(values, np.uint8), (H // 4, W // 4))
    return blocks.repeat(4, 0).repeat(4, 1)


def _pairs(top: Path, pairs, values, palette_masks: bool = False) -> None:
    for k, (image_rel, mask_rel) in enumerate(pairs):
        write_image(top / image_rel, _image(k))
        write_mask(top / mask_rel, _mask(values, k), palette=palette() if palette_masks else None)


def _id_list(path: Path, ids) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(ids) + "\n")


def _voc(top, year, mask_dir, list_dir, values, palette_masks):
    ids = ["2008_000002", "2008_000003"]
    root = top / "VOCdevkit" / year
    _pairs(root, [(f"JPEGImages/{i}.jpg", f"{mask_dir}/{i}.png") for i in ids], values, palette_masks)
    _id_list(root / "ImageSets" / list_dir / "val.txt", ids)


def make_tree(name: str, top: Path) -> dict:
    """Write a two-image tree for ``name`` under ``top``; returns build_dataset keyword arguments."""
    top = Path(top)
    coco_raw = [0, 2, 12, 61, 91, 100, 123, 181, 255]
    if name in ("voc", "voc20"):
        _voc(top, "VOC2012", "SegmentationClass", "Segmentation", [*range(21), 255], True)
    elif name in ("context60", "context59"):
        _voc(top, "VOC2010", "SegmentationClassContext", "SegmentationContext", range(60), False)
    elif name in ("coco_object", "coco_stuff171", "coco_stuff27"):
        ids = ["000000000139", "000000000285"]
        _pairs(top / "coco_stuff164k",
               [(f"images/val2017/{i}.jpg", f"annotations/val2017/{i}.png") for i in ids], coco_raw)
    elif name in ("cityscapes", "cityscapes27"):
        stems = ["frankfurt/frankfurt_000000_000294", "lindau/lindau_000000_000019"]
        _pairs(top / "cityscapes", [(f"leftImg8bit/val/{s}_leftImg8bit.png", f"gtFine/val/{s}_gtFine_labelIds.png")
                                    for s in stems], range(34))
    elif name == "ade20k":
        _pairs(top / "ADEChallengeData2016", [(f"images/validation/ADE_val_0000000{k}.jpg",
                                               f"annotations/validation/ADE_val_0000000{k}.png") for k in (1, 2)],
               range(151))
    elif name == "camvid":
        _pairs(top / "CamVid", [(f"val/{s}.png", f"valannot/{s}.png") for s in ("0001TP_008550", "Seq05VD_f00000")],
               range(12))
    elif name == "folder":
        _pairs(top, [(f"images/val/{s}.png", f"masks/val/{s}.png") for s in ("a", "b")], [0, 1, 2, 255])
        return {"root": top, "split": "val", "classes": ["road", "tree", "sky"], "image_dir": "images/{split}",
                "mask_dir": "masks/{split}"}
    elif name == "synthetic":
        SyntheticWorld(seed=0, size=32).write(top, 2, split="val")
    else:
        raise KeyError(name)
    return {"root": top, "split": "val"}
