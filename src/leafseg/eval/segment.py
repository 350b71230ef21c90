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


def segment(image_path: str | Path, checkpoint: str | Path, out_dir: str | Path, *, classes: list[str] | None = None,
            templates: str = "single", bg_threshold: float | None = None, device: str = "cpu") -> dict:
    """Writes ``<stem>_labels.png`` (palette PNG of class indices), ``<stem>_overlay.png`` and
    ``<stem>_classes.json`` (the class names in index order) to ``out_dir``.

    bg_threshold: if set, pixels whose best class probability is below it get label 0 "background" and
    the classes are numbered from 1. Returns {"labels", "overlay", "classes"} paths.
    """
    from leafseg.data.io import palette, read_image, write_image, write_mask
    from leafseg.eval.methods import load_model
    from leafseg.eval.protocol import Protocol
    from leafseg.eval.report import overlay

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
    out, stem = Path(out_dir), Path(image_path).stem
    paths = {"labels": out / f"{stem}_labels.png", "overlay": out / f"{stem}_overlay.png",
             "classes": out / f"{stem}_classes.json"}
    colours = palette(len(names))
    write_mask(paths["labels"], labels, colours)
    write_image(paths["overlay"], overlay(image, labels, colours))
    paths["classes"].write_text(json.dumps(names, indent=1) + "\n")
    return paths
