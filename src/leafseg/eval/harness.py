"""The benchmark harness: one evaluation loop for every method and protocol.

    from leafseg.eval.harness import evaluate
    report = evaluate(method, dataset, get_preset("groupvit"), out_dir="runs/eval")
    report.miou                                   # fraction in [0, 1]

Per batch: images (and masks) come from worker processes; the model input is resized and run
whole or in sliding windows (:class:`~leafseg.eval.sliding.SlidingWindowPredictor`); scores
become probabilities, synonyms are merged (max over names), PAMR refines them, the background
rule and argmax give labels at the evaluation resolution; confusion counts accumulate on the
device. Cluster methods are labelled per image (oracle) or by one Hungarian matching for the
dataset. Metrics are summed over processes when torch.distributed is initialised (each rank
evaluates every world_size-th image; rank 0 writes the outputs, see :mod:`leafseg.eval.outputs`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from leafseg.data.io import DataError
from leafseg.data.transforms import center_crop
from leafseg.errors import ConfigError
from leafseg.eval.background import apply_background, prompt_classes
from leafseg.eval.matching import ClusterMetric, oracle_labels
from leafseg.eval.metrics import ConfusionMatrix, metrics_from_confusion
from leafseg.eval.outputs import OutputWriter
from leafseg.eval.pamr import pamr
from leafseg.eval.prompts import reduce_queries
from leafseg.eval.protocol import Protocol
from leafseg.eval.sliding import SlidingWindowPredictor, resized_shape

__all__ = ["DatasetInfo", "EvalReport", "center_crop", "dataset_info", "evaluate"]

_ERROR = "error"
_SKIPPED = "skipped"


@dataclass
class DatasetInfo:
    """What the harness needs to know about a dataset (read off the reader's attributes)."""

    name: str
    classes: tuple[str, ...]
    ignore_index: int = 255
    has_background: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def dataset_info(dataset) -> DatasetInfo:
    """Name, classes, ignore index and background flag of a dataset reader (with defaults for
    readers that lack them: the class name, 255, and "class 0 is named background")."""
    classes = tuple(getattr(dataset, "classes", ()) or ())
    if not classes:
        raise ValueError(f"{type(dataset).__name__} has no class names (.classes); the harness needs them")
    name = getattr(dataset, "name", None) or type(dataset).__name__.lower().removesuffix("dataset")
    has_bg = getattr(dataset, "has_background", None)
    if has_bg is None:
        has_bg = classes[0].lower() == "background"
    return DatasetInfo(str(name), classes, int(getattr(dataset, "ignore_index", 255)), bool(has_bg))


@dataclass
class EvalReport:
    """Result of :func:`evaluate`. ``metrics`` holds what ``metrics.json`` holds (fractions in
    [0, 1], NaN as None); ``confusion`` is the (C, C) int64 matrix [ground truth, prediction]."""

    metrics: dict
    protocol: Protocol
    confusion: Tensor
    out_dir: Path | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def miou(self) -> float:
        return _nan(self.metrics["miou"])

    @property
    def acc(self) -> float:
        return _nan(self.metrics["acc"])

    @property
    def images_per_second(self) -> float:
        return _nan(self.metrics["images_per_second"])

    def summary(self) -> str:
        """One line: mIoU, pixel accuracy, mean accuracy, images and speed."""
        m = self.metrics
        return (f"{m['method']} on {m['dataset']} ({self.protocol.name}): mIoU {100 * self.miou:.2f}  "
                f"pixel acc. {100 * self.acc:.2f}  mean acc. {100 * _nan(m['macc']):.2f}  "
                f"({m['num_images']} images, {self.images_per_second:.2f} images/s)")


def _nan(value) -> float:
    return float("nan") if value is None else float(value)


# -- data ----------------------------------------------------------------------------------
class _Samples(Dataset):
    """Items: dict(index, name, image (3, H, W) float, mask (H, W) int64), or dict(index, name, error)
    for a sample that raised DataError, or dict(index, name, skipped) for a stand-in served by a reader
    in skip mode (its messages name the bad samples)."""

    def __init__(self, dataset, center_crop: int | None):
        self.dataset, self.center_crop = dataset, center_crop

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        try:
            item = self.dataset[i]
        except (DataError, OSError) as err:
            return {"index": i, "name": f"#{i}", _ERROR: str(err)}
        if item.get("skipped"):  # a reader in skip mode served a stand-in for bad samples
            return {"index": i, "name": f"#{i}", _SKIPPED: item["skipped"]}
        image, mask = item["image"], torch.as_tensor(item["mask"]).long()
        if self.center_crop:
            image, mask = center_crop(image, mask, self.center_crop)
        return {"index": i, "name": str(item.get("name", f"{i:06d}")), "image": image, "mask": mask}


def _groups(items: list[dict], limit: int):
    """Split items into stackable groups: same image size, at most ``limit`` per group."""
    by_size: dict[tuple, list] = {}
    for item in items:
        by_size.setdefault(tuple(item["image"].shape[-2:]), []).append(item)
    for group in by_size.values():
        for start in range(0, len(group), limit):
            yield group[start : start + limit]


# -- prediction ----------------------------------------------------------------------------
def _activate(scores: Tensor, activation: str) -> Tensor:
    """(B, Q, H, W) scores -> probabilities over Q (softmax), per channel (sigmoid) or unchanged."""
    if activation == "softmax":
        return scores.float().softmax(1)
    if activation == "sigmoid":
        return scores.float().sigmoid()
    return scores.float()


class _Predictor:
    """Turns a prepared method into per-pixel labels (or cluster ids) at the images' own size."""

    def __init__(self, method, protocol: Protocol, num_queries: int, num_classes: int):
        self.method, self.p, self.num_queries, self.num_classes = method, protocol, num_queries, num_classes
        merge_probs = protocol.window_merge == "probabilities"

        def model_fn(x: Tensor) -> Tensor:
            out = method(x)
            return _activate(out, protocol.activation) if merge_probs else out

        self.window = SlidingWindowPredictor(
            model_fn, num_queries, mode=protocol.mode, crop=protocol.crop, stride=protocol.stride,
            short_side=protocol.short_side, size_multiple=protocol.size_multiple,
            batch_windows=protocol.batch_windows)
        self.post_activation = "identity" if merge_probs else protocol.activation

    def _fixed_size(self, images: Tensor) -> Tensor:
        if self.p.size is None:
            return images
        return F.interpolate(images, size=tuple(self.p.size), mode="bilinear", align_corners=False)

    def labels(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> labels (B, H, W) int64 in [0, C)."""
        height, width = images.shape[-2:]
        scores = self.window(self._fixed_size(images))
        if tuple(scores.shape[-2:]) != (height, width):
            scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
        probs = _activate(scores, self.post_activation)
        probs = reduce_queries(probs, getattr(self.method, "query_classes", None))
        if self.p.pamr:
            probs = pamr(images, probs, self.p.pamr_iterations, self.p.pamr_dilations)
        return apply_background(probs, self.p.background, self.p.bg_threshold, self.p.effective_bg_value)

    def clusters(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) -> cluster ids (B, H, W) int64, computed on the resized input."""
        height, width = images.shape[-2:]
        size = tuple(self.p.size) if self.p.size else resized_shape(height, width, self.p.short_side,
                                                                    self.p.size_multiple)
        x = images if size == (height, width) else F.interpolate(images, size=size, mode="bilinear",
                                                                  align_corners=False)
        ids = self.method(x)
        if ids.ndim != 3 or ids.is_floating_point():
            raise ValueError(f"a cluster method must return (B, h, w) integer ids, got {tuple(ids.shape)} "
                             f"{ids.dtype}")
        if tuple(ids.shape[-2:]) != (height, width):
            ids = F.interpolate(ids[:, None].float(), size=(height, width), mode="nearest")[:, 0]
        return ids.long()


# -- the loop ------------------------------------------------------------------------------
def _shard(dataset):
    """This process's share of the dataset under torch.distributed (every world_size-th item)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Subset(dataset, range(dist.get_rank(), len(dataset), dist.get_world_size()))
    return dataset


def _is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _prepare(method, info: DatasetInfo, protocol: Protocol, class_names):
    """Prepare the method; returns (number of output channels Q, metric object)."""
    names = list(class_names) if class_names is not None else list(info.classes)
    if len(names) != info.num_classes:
        raise ConfigError(f"class_names has {len(names)} entries but {info.name} has {info.num_classes} classes")
    clusters = getattr(method, "outputs", "logits") == "clusters"
    if clusters:
        if protocol.labelling == "none":
            raise ConfigError("a cluster method needs labelling=hungarian or labelling=oracle")
        if protocol.mode != "whole":
            raise ConfigError("cluster ids of different windows do not correspond; use mode=whole")
        method.prepare(names, protocol)
        k = int(method.num_clusters)
        if protocol.labelling == "hungarian":
            return k, ClusterMetric(k, info.num_classes, info.ignore_index)
        return k, ConfusionMatrix(info.num_classes, info.ignore_index)
    entries = prompt_classes(names, info.has_background, protocol.background, protocol.bg_words)
    method.prepare(entries, protocol)
    queries = getattr(method, "query_classes", None)
    return (len(queries) if queries is not None else len(entries)), ConfusionMatrix(info.num_classes,
                                                                                    info.ignore_index)


def evaluate(
    method,
    dataset,
    protocol: Protocol | None = None,
    out_dir: str | Path | None = None,
    *,
    progress: bool = True,
    device: str | torch.device = "cpu",
    save_predictions: bool = False,
    num_overlays: int = 4,
    class_names: Sequence[str] | None = None,
    skip_bad: bool = False,
    method_name: str | None = None,
    config: dict | None = None,
) -> EvalReport:
    """Evaluate ``method`` on every sample of ``dataset`` under ``protocol``.

    Args:
        method: a segmenter (see :mod:`leafseg.eval.methods`).
        dataset: items dict(image (3, H, W) float in [0, 1], mask (H, W) int64, name); attributes
            ``classes`` and optionally ``name``, ``ignore_index``, ``has_background``.
        protocol: resolved for the dataset here (its ``per_dataset`` table applied); default
            ``Protocol()`` (whole image at its own size, no background rule).
        out_dir: if given, receives metrics.json, per_class.csv, overlays/, report.html and,
            with ``save_predictions``, predictions/<name>.png (palette PNGs of the labels).
        device: where the method, the predictions and the confusion counts live.
        class_names: entries replacing the dataset's class names as prompts (synonyms allowed).
        skip_bad: skip unreadable samples and count them instead of stopping at the first one.
        method_name, config: recorded in metrics.json.
    """
    info = dataset_info(dataset)
    protocol = (protocol or Protocol()).resolve(info.name)
    device = torch.device(device)
    if hasattr(method, "to"):
        method = method.to(device)
    if hasattr(method, "eval"):
        method.eval()
    num_queries, metric = _prepare(method, info, protocol, class_names)
    clusters = getattr(method, "outputs", "logits") == "clusters"
    predictor = _Predictor(method, protocol, num_queries, info.num_classes)
    writer = OutputWriter(out_dir if _is_main() or save_predictions else None, info, protocol,
                          save_predictions=save_predictions, num_overlays=num_overlays if _is_main() else 0,
                          num_clusters=num_queries if clusters else None)
    samples = _shard(_Samples(dataset, protocol.center_crop))
    loader = DataLoader(samples, batch_size=protocol.batch_size, num_workers=protocol.workers,
                        collate_fn=list, pin_memory=device.type == "cuda",
                        generator=torch.Generator())  # its own generator: an evaluation leaves the global RNG alone
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if protocol.amp and device.type == "cuda" \
        else contextlib.nullcontext()
    skipped, done = [], 0
    bar = tqdm(total=len(samples), unit="img", disable=not progress, desc=f"eval {method_name or 'method'}")
    start = time.perf_counter()
    with torch.no_grad(), amp:
        for items in loader:
            good = _triage(items, skip_bad, skipped)
            for group in _groups(good, protocol.batch_size):
                _score(group, predictor, metric, writer, info, device)
            done += len(good)
            bar.update(len(items))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    bar.close()
    return _finish(metric, info, protocol, writer, done, skipped, seconds, method_name, config, device)


def _triage(items: list[dict], skip_bad: bool, skipped: list[str]) -> list[dict]:
    """The good items of a batch; bad ones are counted in ``skipped`` or stop the run."""
    good = []
    for item in items:
        if _SKIPPED in item:
            skipped += item[_SKIPPED].split("\n")
        elif _ERROR not in item:
            good.append(item)
        elif skip_bad:
            skipped.append(item[_ERROR])
        else:
            raise DataError(f"{item[_ERROR]} (pass skip_bad / --skip-bad to skip and count such samples)")
    return good


def _score(group: list[dict], predictor: _Predictor, metric, writer, info: DatasetInfo, device) -> None:
    """Predict one stackable group, add it to the metric and the outputs."""
    images = torch.stack([it["image"] for it in group]).to(device, non_blocking=True).float()
    masks = torch.stack([it["mask"] for it in group]).to(device, non_blocking=True)
    if getattr(predictor.method, "outputs", "logits") != "clusters":
        labels = predictor.labels(images)
    else:
        ids = predictor.clusters(images)
        if predictor.p.labelling == "hungarian":
            metric.update(ids, masks)
            writer.add(group, images, masks, ids, is_clusters=True)
            return
        labels = oracle_labels(ids, masks, info.num_classes, info.ignore_index, predictor.num_queries)
    metric.update(labels, masks)
    writer.add(group, images, masks, labels)


def _reduced_count(value: int, device) -> int:
    if dist.is_available() and dist.is_initialized():
        t = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(t)
        return int(t.item())
    return value


def _finish(metric, info, protocol, writer, done, skipped, seconds, method_name, config, device) -> EvalReport:
    """All-reduce the counts, compute the metrics, write the outputs, build the report."""
    metric.all_reduce()
    total = _reduced_count(done, device)
    assignment = None
    if isinstance(metric, ClusterMetric):
        assignment = metric.assignment()
        # (C, C) [gt, matched class]: the [gt, cluster] columns merged by their class.
        confusion = torch.zeros(info.num_classes, info.num_classes, dtype=torch.int64,
                                device=assignment.device).index_add_(1, assignment, metric.histogram.t())
    else:
        confusion = metric.mat
    values = metrics_from_confusion(confusion)
    metrics = writer.metrics_dict(values, confusion, method=method_name, num_images=total, skipped=skipped,
                                  seconds=seconds, assignment=assignment, config=config, device=device)
    if assignment is not None:
        writer.remap_clusters(assignment)
    out_dir = writer.finish(metrics) if _is_main() else None
    return EvalReport(metrics, protocol, confusion.cpu(), out_dir, skipped)
