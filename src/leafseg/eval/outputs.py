"""What an evaluation leaves in its output folder.

    out_dir/metrics.json         mIoU, accuracies, per-class IoU by name, images/s, the resolved
                                 protocol and the run record (seed, commit, environment)
    out_dir/per_class.csv        class, iou, acc, gt_pixels, predicted_pixels
    out_dir/overlays/<name>.png  image | ground truth | prediction, for the first few samples
    out_dir/report.html          the same, as a page
    out_dir/predictions/<name>.png   (optional) palette PNGs of the predicted labels
    out_dir/clusters/<name>.png      (optional, Hungarian labelling) the raw cluster ids

Fractions are in [0, 1]; NaN (a class absent from ground truth and prediction) is written as null.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from leafseg.data.io import palette, read_mask, write_mask
from leafseg.eval import report
from leafseg.training.runinfo import run_record, write_json

__all__ = ["OutputWriter", "safe_name"]


def safe_name(name: str) -> str:
    """A sample name as a relative path inside the output folder (no absolute parts, no '..')."""
    parts = [p for p in str(name).replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "sample"


def _clean(value):
    """NaN -> None, recursively, so that metrics.json is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _percent(value) -> float:
    return float("nan") if value is None else 100.0 * value


class OutputWriter:
    """Collects predictions during the loop and writes the folder at the end (no-op without out_dir).

    Args:
        out_dir: the output folder, or None to write nothing.
        info: the dataset's :class:`~leafseg.eval.harness.DatasetInfo`.
        protocol: the resolved protocol (saved in metrics.json).
        save_predictions: write every prediction as a palette PNG.
        num_overlays: how many samples get an overlay picture.
        num_clusters: K for cluster methods (raw cluster maps are remapped after matching).
    """

    def __init__(self, out_dir, info, protocol, *, save_predictions: bool = False, num_overlays: int = 4,
                 num_clusters: int | None = None):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.info, self.protocol = info, protocol
        self.save_predictions = save_predictions and self.out_dir is not None
        self.num_overlays = num_overlays if self.out_dir is not None else 0
        self.colours = palette(max(info.num_classes, 2))
        self.cluster_colours = palette(max(num_clusters or 2, 2))
        self.overlays: list[dict] = []
        self.cluster_files: list[Path] = []

    def add(self, group: list[dict], images: Tensor, masks: Tensor, labels: Tensor, is_clusters: bool = False):
        """Record a batch: images (B, 3, H, W) in [0, 1], masks (B, H, W), labels (B, H, W) class ids
        (or cluster ids when ``is_clusters``)."""
        if self.out_dir is None:
            return
        want = self.save_predictions or len(self.overlays) < self.num_overlays
        if not want:
            return
        pred = labels.to(torch.uint8).cpu().numpy()
        for b, item in enumerate(group):
            name = safe_name(item["name"])
            if self.save_predictions:
                folder = "clusters" if is_clusters else "predictions"
                colours = self.cluster_colours if is_clusters else self.colours
                path = write_mask(self.out_dir / folder / f"{name}.png", pred[b], palette=colours)
                if is_clusters:
                    self.cluster_files.append(path)
            if len(self.overlays) < self.num_overlays:
                image = (images[b].float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
                self.overlays.append({"name": name, "image": image, "gt": masks[b].cpu().numpy(),
                                      "pred": pred[b].copy(), "clusters": is_clusters})

    def remap_clusters(self, assignment: Tensor) -> None:
        """Hungarian labelling found: turn saved cluster maps and overlays into class labels."""
        table = np.zeros(256, dtype=np.uint8)
        table[: len(assignment)] = assignment.cpu().numpy().astype(np.uint8)
        for ov in self.overlays:
            if ov["clusters"]:
                ov["pred"], ov["clusters"] = table[ov["pred"]], False
        for path in self.cluster_files:
            rel = path.relative_to(self.out_dir / "clusters")
            write_mask(self.out_dir / "predictions" / rel, table[read_mask(path)], palette=self.colours)

    def metrics_dict(self, values: dict, confusion: Tensor, *, method: str | None, num_images: int,
                     skipped: list[str], seconds: float, assignment: Tensor | None, config: dict | None,
                     device) -> dict:
        """The content of metrics.json (also the :class:`EvalReport`'s ``metrics``)."""
        classes = self.info.classes
        counts = confusion.double().cpu()
        metrics = {
            "method": method or "method",
            "dataset": self.info.name,
            "num_classes": len(classes),
            "num_images": num_images,
            "skipped": sorted(set(skipped)),
            "miou": values["miou"], "acc": values["acc"], "macc": values["macc"], "fwiou": values["freq_iou"],
            "per_class_iou": dict(zip(classes, values["iou"], strict=True)),
            "per_class_acc": dict(zip(classes, values["class_acc"], strict=True)),
            "gt_pixels": dict(zip(classes, counts.sum(1).long().tolist(), strict=True)),
            "predicted_pixels": dict(zip(classes, counts.sum(0).long().tolist(), strict=True)),
            "pixels": values["pixels"],
            "seconds": seconds,
            "images_per_second": num_images / seconds if seconds > 0 else float("nan"),
            "labelling": self.protocol.labelling,
            "assignment": assignment.cpu().tolist() if assignment is not None else None,
            "protocol": self.protocol.to_dict(),
        }
        run_config = {"method": method, "dataset": self.info.name, "protocol": self.protocol.to_dict(),
                      **(config or {})}
        metrics["run"] = run_record(seed=(config or {}).get("seed"), config=run_config, device=device)
        return _clean(metrics)

    def finish(self, metrics: dict) -> Path | None:
        """Write metrics.json, per_class.csv, overlays and report.html; returns the folder."""
        if self.out_dir is None:
            return None
        out = self.out_dir
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "metrics.json", metrics)
        with open(out / "per_class.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["class", "iou", "acc", "gt_pixels", "predicted_pixels"])
            for name in self.info.classes:
                iou, acc = metrics["per_class_iou"][name], metrics["per_class_acc"][name]
                writer.writerow([name, "" if iou is None else f"{iou:.6f}", "" if acc is None else f"{acc:.6f}",
                                 metrics["gt_pixels"][name], metrics["predicted_pixels"][name]])
        pictures = self._write_overlays()
        self._write_html(metrics, pictures)
        return out

    def _write_overlays(self) -> list[Path]:
        paths = []
        for ov in self.overlays:
            h, w = ov["gt"].shape
            scale = max(1, 192 // max(h, w))
            colours = self.cluster_colours if ov["clusters"] else self.colours
            row = [ov["image"], report.overlay(ov["image"], ov["gt"], self.colours),
                   report.overlay(ov["image"], ov["pred"], colours)]
            paths.append(report.gallery([row], ["image", "ground truth", "prediction"],
                                        self.out_dir / "overlays" / f"{ov['name']}.png", scale=scale))
        return paths

    def _write_html(self, metrics: dict, pictures: list[Path]) -> None:
        pct = {k: _percent(v) for k, v in metrics["per_class_iou"].items()}
        speed = metrics["images_per_second"]
        row = {"method": metrics["method"], "dataset": metrics["dataset"], "protocol": self.protocol.name,
               "mIoU": _percent(metrics["miou"]), "pixel acc.": _percent(metrics["acc"]),
               "images": metrics["num_images"], "images/s": float("nan") if speed is None else speed}
        figures = "".join(f'<p>{p.stem}</p><img src="{p.relative_to(self.out_dir).as_posix()}">' for p in pictures)
        sections = [
            ("Summary", report.metrics_table([row], list(row))),
            ("Per-class IoU", report.bars_html(pct)),
            ("Classes", report.legend_html(self.info.classes, self.colours)),
            ("Samples", figures or '<p class="note">none</p>'),
            ("Protocol", "<pre>" + self.protocol.to_yaml().replace("<", "&lt;") + "</pre>"),
        ]
        report.write_html(self.out_dir / "report.html", f"{metrics['method']} on {metrics['dataset']}", sections)
