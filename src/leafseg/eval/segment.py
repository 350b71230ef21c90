"""Label one image with a trained model: ``leafseg segment``.

    segment("photo.jpg", "runs/sseg/final.pt", "out/", classes=["cat", "dog", "grass"])     # open vocabulary
    segment("street.png", "runs/unimatch_v2/best_ema.safetensors", "out/")                  # its own classes

Works on the exported weights of every recipe (:mod:`leafseg.registry`). An open-vocabulary model (S-Seg)
needs class names; a closed-vocabulary one (UniMatch V2, S-Seg+) uses the classes it was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from leafseg.errors import ConfigError

DEFAULT_ALPHA = 0.55  # the overlay opacity of :func:`leafseg.eval.report.overlay`


def segment(image_path: str | Path, checkpoint: str | Path, out_dir: str | Path, *, classes: list[str] | None = None,
            templates: str = "single", bg_threshold: float | None = None, alpha: float = DEFAULT_ALPHA,
            device: str = "cpu") -> dict:
    """Label one image and write the result with :func:`write_segmentation`.

    bg_threshold: if set, pixels whose best class probability is below it get label 0 "background" and
    the classes are numbered from 1. alpha: opacity of the class colours in the overlay, in [0, 1].
    Returns {"labels", "overlay", "classes"} paths.
    """
    from leafseg.data.io import read_image
    from leafseg.eval.methods import load_model
    from leafseg.eval.protocol import Protocol

    check_alpha(alpha)
    method = load_model(checkpoint, device)
    own = getattr(method, "class_names", None)
    if own is None and not classes:
        raise ConfigError(f"{checkpoint} is an open-vocabulary model: give class names (--classes 'cat,dog,grass')")
    if own is not None and classes and list(classes) != list(own):
        raise ConfigError(f"{checkpoint} predicts its own {len(own)} classes ({', '.join(own)}); leave out --classes")
    names = list(classes or own)
    image = read_image(image_path)
    method.prepare(names, Protocol(templates=templates))
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None].to(device)
    with torch.no_grad():
        scores = F.interpolate(method(x).float(), size=image.shape[:2], mode="bilinear", align_corners=False)[0]
    probs = scores if getattr(method, "activation", "softmax") == "identity" else scores.softmax(0)
    best, labels = probs.max(0)
    if bg_threshold is not None:
        labels = torch.where(best < bg_threshold, torch.zeros_like(labels), labels + 1)
        names = ["background", *names]
    labels = labels.cpu().numpy().astype(np.uint8)
    return write_segmentation(out_dir, Path(image_path).stem, image, labels, names, alpha=alpha)


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
