"""Label images with a trained model or a method built by name: ``leafseg segment``.

    segment("photo.jpg", "runs/sseg/final.pt", "out/", classes=["cat", "dog", "grass"])     # open vocabulary
    segment("street.png", "runs/unimatch_v2/best_ema.safetensors", "out/")                  # its own classes
    method = build_segment_method("grouping_clip", weights="openai/clip-vit-base-patch16")
    segment_images(["a.png", "b.png"], method, "out/", classes=["road", "sky", "tree"])     # training-free

Works on the exported weights of every recipe (:mod:`leafseg.registry`) and on the methods of
:func:`leafseg.eval.methods.build_method` that score classes. An open-vocabulary model (S-Seg, grouping_clip,
the CLIP methods) needs class names; a closed-vocabulary one (UniMatch V2, S-Seg+) uses the classes it was
trained on; a cluster model (STEGO) labels each pixel with its cluster, named by the class the cluster was
matched to at the run's last evaluation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from leafseg.errors import ConfigError

DEFAULT_ALPHA = 0.55  # the overlay opacity of :func:`leafseg.eval.report.overlay`


def segment(image_path: str | Path, checkpoint: str | Path, out_dir: str | Path, *, classes: list[str] | None = None,
            templates: str = "single", bg_threshold: float | None = None, alpha: float = DEFAULT_ALPHA,
            device: str = "cpu") -> dict:
    """Label one image with exported weights; see :func:`segment_images`. Returns {"labels", "overlay",
    "classes"} paths."""
    from leafseg.eval.methods import load_model

    check_alpha(alpha)
    method = load_model(checkpoint, device)
    return segment_images([image_path], method, out_dir, classes=classes, templates=templates,
                          bg_threshold=bg_threshold, alpha=alpha, device=device, source=str(checkpoint))[0]


def build_segment_method(name: str, *, weights: str | None = None, backbone: str | None = None,
                         options: dict | None = None, device: str = "cpu"):
    """The method ``leafseg segment --method NAME`` runs: exported weights for "model" (``weights`` the file),
    else :func:`~leafseg.eval.methods.build_method` with the backbone, its weights and the options."""
    from leafseg.eval import methods

    if name == "model":
        if weights is None:
            raise ConfigError("--method model needs --weights: weights a recipe exported")
        if backbone is not None or options:
            raise ConfigError("--backbone and --option apply to methods built by name; --method model rebuilds "
                              "the model its weights name")
        return methods.load_model(weights, device)
    method = methods.build_method(name, backbone=backbone, weights=weights, device=device, **dict(options or {}))
    if getattr(method, "outputs", "logits") != "logits":
        raise ConfigError(f"method {name!r} outputs cluster ids, not class scores: it cannot name classes")
    return method


def read_class_file(path: str | Path) -> list[str]:
    """The class entries of a ``--classes-file``: one per non-empty line (synonyms comma-separated)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--classes-file {path}: file not found")
    entries = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not entries:
        raise ConfigError(f"--classes-file {path}: no class names (one class per line)")
    return entries


def _class_names(method, classes: Sequence[str] | None, source: str) -> list[str]:
    """The names to prepare ``method`` with: ``classes``, or the model's own (refusing a conflict)."""
    own = getattr(method, "class_names", None)
    if own is None and not classes:
        raise ConfigError(f"{source} is an open-vocabulary model: give class names (--classes 'cat,dog,grass' "
                          "or --classes-file)")
    if own is not None and classes and list(classes) != list(own):
        raise ConfigError(f"{source} predicts its own {len(own)} classes ({', '.join(own)}); leave out --classes")
    return list(classes or own)


def segment_images(image_paths: Sequence[str | Path], method, out_dir: str | Path, *,
                   classes: Sequence[str] | None = None, templates: str = "single", bg_threshold: float | None = None,
                   alpha: float = DEFAULT_ALPHA, device: str = "cpu", source: str = "the method") -> list[dict]:
    """Label every image at its own resolution and write each with :func:`write_segmentation`.

    method: a prepared-on-demand segmenter (logits (B, Q, h, w), or ids (B, h, w) of a cluster method);
    classes: entries (synonyms comma-separated) or None for a closed-vocabulary model's own. bg_threshold: if
    set, pixels whose best class probability is below it get label 0 "background" and the classes are
    numbered from 1. alpha: opacity of the class colours in the overlay, in [0, 1]. Returns one {"labels",
    "overlay", "classes"} dict of paths per image.
    """
    from leafseg.eval.prompts import reduce_queries
    from leafseg.eval.protocol import Protocol

    check_alpha(alpha)
    stems = [Path(p).stem for p in image_paths]
    if len(set(stems)) != len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})
        raise ConfigError(f"images share a file name ({', '.join(twice)}): their outputs would overwrite each other")
    clusters = getattr(method, "outputs", "logits") == "clusters"
    if clusters and bg_threshold is not None:
        raise ConfigError(f"{source} predicts clusters, not class probabilities: leave out the background threshold")
    names = _class_names(method, classes, source)
    if hasattr(method, "to"):
        method = method.to(device).eval()
    method.prepare(names, Protocol(templates=templates))
    if bg_threshold is not None:
        names = ["background", *names]
    written = []
    for path, stem in zip(image_paths, stems, strict=True):
        if clusters:
            image, labels = _cluster_labels(method, path, device)
        else:
            image, scores = _scores(method, path, device)
            probs = scores if getattr(method, "activation", "softmax") == "identity" else scores.softmax(0)
            probs = reduce_queries(probs[None], getattr(method, "query_classes", None))[0]  # max over a class's names
            labels = _labels(probs, bg_threshold)
        written.append(write_segmentation(out_dir, stem, image, labels, names, alpha=alpha))
    return written


def _cluster_labels(method, path, device) -> tuple[np.ndarray, np.ndarray]:
    """image (H, W, 3) uint8 and a cluster method's ids (H, W) uint8, resized (nearest) to the image."""
    image, x = _read(path, device)
    with torch.no_grad():
        ids = method(x)[:, None].float()
    ids = F.interpolate(ids, size=image.shape[:2], mode="nearest")[0, 0]
    return image, ids.long().cpu().numpy().astype(np.uint8)


def _read(path, device) -> tuple[np.ndarray, torch.Tensor]:
    """image (H, W, 3) uint8 and the method's input (1, 3, H, W) in [0, 1] on ``device``."""
    from leafseg.data.io import read_image

    image = read_image(path)
    return image, torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None].to(device)


def _scores(method, path, device) -> tuple[np.ndarray, torch.Tensor]:
    """image (H, W, 3) uint8 and the method's scores (Q, H, W) float32, resized to the image if needed."""
    image, x = _read(path, device)
    with torch.no_grad():
        scores = method(x).float()
    return image, F.interpolate(scores, size=image.shape[:2], mode="bilinear", align_corners=False)[0]


def _labels(probs: torch.Tensor, bg_threshold: float | None) -> np.ndarray:
    """probs (C, H, W) -> labels (H, W) uint8: argmax, 0 = background below ``bg_threshold`` (then + 1)."""
    best, labels = probs.max(0)
    if bg_threshold is not None:
        labels = torch.where(best < bg_threshold, torch.zeros_like(labels), labels + 1)
    return labels.cpu().numpy().astype(np.uint8)


def check_alpha(alpha: float) -> float:
    """Raise ConfigError unless the overlay opacity ``alpha`` is a number in [0, 1]; returns it."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(f"alpha (overlay opacity) must be between 0 and 1, got {alpha!r}")
    return float(alpha)


def class_table(labels: np.ndarray, names: list[str], colours: np.ndarray) -> list[dict]:
    """Per class in index order: {"index", "name", "colour" [r, g, b], "share"}, where share is the
    fraction of the pixels of ``labels`` (H, W) that carry the class (the shares sum to 1)."""
    counts = np.bincount(labels.ravel(), minlength=len(names))[: len(names)]
    return [{"index": i, "name": name, "colour": [int(v) for v in colours[i]], "share": float(counts[i] / labels.size)}
            for i, name in enumerate(names)]


def write_segmentation(out_dir: str | Path, stem: str, image: np.ndarray, labels: np.ndarray, names: list[str], *,
                       alpha: float = DEFAULT_ALPHA) -> dict:
    """Write one image's segmentation to ``out_dir``:

    * ``<stem>_labels.png``: palette PNG of the class indices, (H, W) like the image;
    * ``<stem>_overlay.png``: the class colours blended over the image with opacity ``alpha``, at the
      image's own resolution, and to its right a legend (colour and name) of the classes present;
    * ``<stem>_classes.json``: :func:`class_table`, a list with each class's index, name, colour and share.

    image (H, W, 3) uint8, labels (H, W) uint8 with values < len(names). Returns {"labels", "overlay",
    "classes"} paths.
    """
    from leafseg.data.io import palette, write_image, write_mask
    from leafseg.eval.report import overlay, with_legend
    from leafseg.files import atomic_write_text

    alpha = check_alpha(alpha)
    out = Path(out_dir)
    paths = {"labels": out / f"{stem}_labels.png", "overlay": out / f"{stem}_overlay.png",
             "classes": out / f"{stem}_classes.json"}
    colours = palette(len(names))
    present = [int(i) for i in np.unique(labels) if i < len(names)]
    write_mask(paths["labels"], labels, colours)
    write_image(paths["overlay"], with_legend(overlay(image, labels, colours, alpha=alpha),
                                              [names[i] for i in present], colours[present]))
    table = class_table(labels, names, colours)
    atomic_write_text(paths["classes"], json.dumps(table, indent=1) + "\n")
    return paths
