"""`leafseg data check`: scan a dataset split once and report every bad file before training.

Each sample is read in DataLoader worker processes and checked for: unreadable files
(corrupt or truncated images and masks, colour masks), image/mask size mismatches, label
values outside the class set after the dataset's label mapping, and missing pairs (images
without masks, masks without images). The report counts each problem and names the files.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from leafseg.config import parse_key_values
from leafseg.data.datasets import SegmentationDataset, build_dataset
from leafseg.data.datasets.labels import describe_values, map_labels
from leafseg.data.io import DataError, read_image, read_mask
from leafseg.errors import ConfigError

PROBLEMS = {
    "unreadable": "unreadable files",
    "size_mismatch": "image/mask size mismatches",
    "bad_labels": "masks with labels outside the class set",
    "missing_mask": "images without masks",
    "missing_image": "masks without images",
}


@dataclass
class CheckReport:
    """What a scan found. ``problems[kind]`` lists ``{"file": path, "message": text}`` per bad file;
    ``label_values`` counts the pixels of each stored value outside the class set, over the whole split."""

    dataset: str
    root: str
    split: str
    samples: int
    num_classes: int
    ignore_index: int
    problems: dict[str, list[dict]] = field(default_factory=lambda: {k: [] for k in PROBLEMS})
    label_values: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def counts(self) -> dict[str, int]:
        return {kind: len(found) for kind, found in self.problems.items()}

    def files(self, kind: str) -> list[str]:
        """The files with problem ``kind`` (one of PROBLEMS)."""
        return [p["file"] for p in self.problems[kind]]

    def add(self, kind: str, file: str | os.PathLike, message: str) -> None:
        self.problems[kind].append({"file": str(file), "message": message})

    def summary(self, limit: int = 5) -> str:
        """A readable report: totals, then up to ``limit`` messages per problem."""
        lines = [f"{self.dataset} split {self.split!r} at {self.root}: {self.samples} samples, "
                 f"{self.num_classes} classes ({self.seconds:.1f} s)"]
        for kind, title in PROBLEMS.items():
            found = self.problems[kind]
            if not found:
                continue
            lines.append(f"  {title}: {len(found)}")
            lines += [f"    {p['message']}" for p in found[:limit]]
            if len(found) > limit:
                lines.append(f"    ... and {len(found) - limit} more")
        if self.label_values:
            lines.append(f"  stored label values outside 0..{self.num_classes - 1} ({self.ignore_index} = ignore) "
                         f"after mapping, with pixel counts: {describe_values(self.label_values, limit=20)}")
        bad = sum(self.counts().values())
        lines.append("OK: no problems found" if self.ok else f"FAILED: {bad} problems")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "root": self.root, "split": self.split, "samples": self.samples,
                "num_classes": self.num_classes, "ignore_index": self.ignore_index, "ok": self.ok,
                "counts": self.counts(), "problems": self.problems,
                "label_values": {str(k): v for k, v in sorted(self.label_values.items())},
                "seconds": round(self.seconds, 3)}

    def write_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path


def inspect_sample(ds: SegmentationDataset, i: int) -> dict:
    """Every problem of sample ``i``: ``{"problems": [(kind, file, message)], "values": {value: pixels}}``."""
    image_path, mask_path = ds.samples[i]
    found, values = [], {}
    image = raw = None
    if not image_path.is_file():
        also = "" if mask_path.is_file() else f" (its mask {mask_path} is missing too)"
        found.append(("missing_image", str(image_path), f"{image_path}: image file not found{also}"))
    else:
        try:
            image = read_image(image_path)
        except DataError as err:
            found.append(("unreadable", str(image_path), str(err)))
    if not mask_path.is_file():
        if image_path.is_file():
            found.append(("missing_mask", str(mask_path), f"{mask_path}: no mask for image {image_path.name}"))
    else:
        try:
            raw = read_mask(mask_path)
        except DataError as err:
            found.append(("unreadable", str(mask_path), str(err)))
    if image is not None and raw is not None and image.shape[:2] != raw.shape:
        (h, w), (ih, iw) = raw.shape, image.shape[:2]
        found.append(("size_mismatch", str(mask_path),
                      f"{mask_path}: mask is {h}x{w} (HxW) but its image {image_path.name} is {ih}x{iw}"))
    if raw is not None:
        try:
            _, values = map_labels(raw, ds.lut_for(mask_path), ds.num_classes, ds.ignore_index)
        except DataError as err:
            found.append(("unreadable", str(mask_path), str(err)))
        if values:
            found.append(("bad_labels", str(mask_path),
                          f"{mask_path}: stored values outside the class set: {describe_values(values)}"))
    return {"problems": found, "values": values}


class _Scan(Dataset):
    """Items: the problems of one sample (small picklable dicts, so worker processes send back little)."""

    def __init__(self, ds: SegmentationDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        return inspect_sample(self.ds, i)


def _as_is(item):
    return item


def check_dataset(name: str, root: str | os.PathLike, split: str | None = None, workers: int = 2,
                  progress: bool = True, *, split_file: str | os.PathLike | None = None,
                  **options) -> CheckReport:
    """Scan every sample of a split once; layout errors (missing folders, split lists) raise DataError.

    workers: DataLoader worker processes (0 reads in this process). options: the dataset's options.
    """
    start = time.perf_counter()
    ds = build_dataset(name, root, split, split_file=split_file, **options)
    report = CheckReport(name, str(ds.root), ds.split, len(ds), ds.num_classes, ds.ignore_index)
    for path in ds.unpaired_masks:
        report.add("missing_image", path, f"{path}: mask without an image")
    loader = DataLoader(_Scan(ds), batch_size=None, num_workers=workers, collate_fn=_as_is,
                        prefetch_factor=8 if workers > 0 else None)
    for item in tqdm(loader, total=len(ds), desc=f"checking {name} {ds.split}", unit="sample",
                     disable=not progress):
        for kind, file, message in item["problems"]:
            report.add(kind, file, message)
        for value, count in item["values"].items():
            report.label_values[value] = report.label_values.get(value, 0) + count
    report.seconds = time.perf_counter() - start
    return report


def run_check(args) -> int:
    """Run ``leafseg data check`` from parsed arguments; the exit status is 0 when nothing is wrong, else 1."""
    try:
        options = parse_key_values(args.data_option)
    except ConfigError as err:
        raise ConfigError(f"-o/--data-option: {err}") from None
    report = check_dataset(args.dataset, args.root, args.split, workers=args.workers, progress=not args.quiet,
                           split_file=args.split_file, **options)
    print(report.summary(limit=args.limit))
    if args.json:
        report.write_json(args.json)
        print(f"report: {args.json}")
    return 0 if report.ok else 1
