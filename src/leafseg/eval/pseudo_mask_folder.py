"""Pseudo-masks for a folder of images, with the oracle mIoU when ground-truth masks are given.

Images are read in worker processes, resized to a common working size (so that any folder batches),
encoded and clustered on the device a batch at a time, and the region maps are resized back to each
image's own size and written as palette PNGs (indices = region ids, colours for viewing).

This runner sits in ``eval`` because it scores the regions (oracle labelling, confusion matrix) with
the evaluation metrics; it uses :mod:`leafseg.grouping` for the regions, and grouping imports
nothing from ``eval``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from leafseg.data.io import DataError, list_images, palette, read_image, read_mask, write_mask
from leafseg.eval.matching import oracle_labels
from leafseg.eval.metrics import ConfusionMatrix
from leafseg.grouping.pseudo_masks import PseudoMaskGenerator, upsample_labels

_ERROR = "error"


class _ImageFolder(Dataset):
    """Items: dict(name, image (3, h, w) float in [0, 1] at the working size, size (H, W), mask or None)."""

    def __init__(self, paths, gt_dir, working_size, num_classes, ignore_index):
        self.paths, self.gt_dir, self.working_size = paths, gt_dir, working_size
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        path = self.paths[i]
        try:
            image = read_image(path)
            mask = None
            if self.gt_dir is not None:
                mask_path = Path(self.gt_dir) / (path.stem + ".png")
                if not mask_path.is_file():
                    raise DataError(f"{mask_path}: no ground-truth mask for image {path.name}")
                mask = read_mask(mask_path, num_classes=self.num_classes, ignore_index=self.ignore_index,
                                 expected_size=image.shape[:2])
                mask = torch.from_numpy(mask.astype(np.int64))
        except DataError as err:
            return {"name": path.name, _ERROR: str(err)}
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
        if self.working_size is not None:
            tensor = F.interpolate(tensor[None], size=self.working_size, mode="bilinear",
                                   align_corners=False, antialias=True)[0]
        return {"name": path.name, "image": tensor, "size": image.shape[:2], "mask": mask}


def _collate(items):
    return items


@dataclass
class FolderResult:
    """Summary of a folder run: counts, throughput, and the oracle metrics when masks were given."""

    written: int = 0
    skipped: list = field(default_factory=list)
    seconds: float = 0.0
    oracle: dict | None = None

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else float("nan")


def _batches_by_size(items):
    """Group items whose working images share a size, so each group stacks into one tensor."""
    groups: dict[tuple, list] = {}
    for item in items:
        groups.setdefault(tuple(item["image"].shape[-2:]), []).append(item)
    return groups.values()


def pseudo_mask_folder(
    generator: PseudoMaskGenerator,
    image_dir: str | Path,
    out_dir: str | Path,
    *,
    gt_dir: str | Path | None = None,
    num_classes: int | None = None,
    ignore_index: int = 255,
    working_size: tuple[int, int] | None = None,
    batch_size: int = 16,
    num_workers: int = 2,
    skip_bad: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> FolderResult:
    """Write ``out_dir/<image stem>.png`` region maps for every image of ``image_dir``.

    gt_dir: folder of ground-truth masks named ``<image stem>.png``; when given, ``num_classes`` is required
        and the oracle mIoU (every region takes its majority class) is accumulated over the folder.
    working_size: (H, W) every image is resized to before the encoder (required for batching images of
        different sizes; by default images of the same size are batched together).
    skip_bad: skip unreadable or inconsistent samples and count them; by default the first one stops the run
        with a :class:`~leafseg.data.io.DataError` naming the file.
    """
    paths = list_images(image_dir)
    if not paths:
        raise DataError(f"{image_dir}: no images found (looked for .jpg, .jpeg, .png, .bmp, .webp)")
    if gt_dir is not None and num_classes is None:
        raise ValueError("num_classes is required with gt_dir (label values are checked against it)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = _ImageFolder(paths, gt_dir, working_size, num_classes, ignore_index)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    confusion = ConfusionMatrix(num_classes, ignore_index, device=device) if gt_dir is not None else None
    colours = palette(max(generator.k, 2))
    result = FolderResult()
    start = time.perf_counter()
    bar = tqdm(total=len(paths), unit="img", disable=not progress, desc="pseudo-masks")
    for items in loader:
        good = []
        for item in items:
            if _ERROR not in item:
                good.append(item)
            elif skip_bad:
                result.skipped.append(item[_ERROR])
            else:
                raise DataError(item[_ERROR] + " (pass skip_bad / --skip-bad to skip and count such files)")
        for group in _batches_by_size(good):
            images = torch.stack([it["image"] for it in group]).to(device)
            tokens = generator.regions(images)  # (b, h, w)
            for it, lab in zip(group, tokens, strict=True):
                regions = upsample_labels(lab[None], it["size"], generator.k, generator.upsample)
                write_mask(out_dir / (Path(it["name"]).stem + ".png"),
                           regions[0].to(torch.uint8).cpu().numpy(), palette=colours)
                if confusion is not None:
                    target = it["mask"].to(device)[None]
                    oracle = oracle_labels(regions, target, num_classes, ignore_index, generator.k)
                    confusion.update(oracle, target)
        result.written += len(good)
        bar.update(len(items))
        bar.set_postfix(img_s=f"{result.written / max(time.perf_counter() - start, 1e-9):.1f}")
    bar.close()
    result.seconds = time.perf_counter() - start
    if confusion is not None:
        result.oracle = confusion.compute()
    return result
