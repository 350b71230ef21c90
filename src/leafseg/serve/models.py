"""The models a ``leafseg serve`` page offers, each loaded once and kept by the label the page shows.

    shelf = ModelShelf(device="cpu")
    shelf.add_checkpoint("runs/sseg_synthetic/final.pt")       # any recipe's exported weights
    shelf.add_method("maskclip", "clip_vitb16", "weights/clip")  # training-free, local weights (also sclip, ...)
    shelf.add_method("kmeans", "pixels8")                       # training-free, needs no weights
    shelf.get("final.pt (sseg)").vocabulary                      # "open", "fixed" or "regions"

A model names its classes in one of three ways: ``fixed`` (trained on a class list: UniMatch V2, S-Seg+),
``open`` (labels with whatever class names are typed: S-Seg, the CLIP methods) or ``regions`` (k-means: unnamed
regions, as many as asked for).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from leafseg.errors import ConfigError

CLIP_METHODS = {"maskclip": "MaskCLIP", "sclip": "SCLIP", "clearclip": "ClearCLIP", "naclip": "NACLIP"}
TRAINING_FREE = (*CLIP_METHODS, "kmeans")  # ProxyCLIP needs a second encoder's weights: `leafseg eval` has it


@dataclass
class PageModel:
    """One model of the page.

    label: the name the page shows (unique on the page). method: a harness method
    (:mod:`leafseg.eval.methods`), loaded. classes: the class names of a fixed-vocabulary model, else None.
    vocabulary: "fixed", "open" or "regions" (see the module docstring). about: one sentence for the page.
    """

    label: str
    method: object
    classes: list[str] | None
    vocabulary: str
    about: str


class ModelShelf:
    """The models of one page by label, in the order they were added; models can be added while the
    page is served (a lock guards the table)."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._models: dict[str, PageModel] = {}
        self._sources: dict[tuple, str] = {}  # what was loaded -> its label, so nothing is loaded twice
        self._lock = threading.Lock()

    def labels(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def get(self, label: str | None) -> PageModel:
        """The model shown as ``label``; ConfigError if the page has none by that name."""
        with self._lock:
            if label not in self._models:
                known = ", ".join(self._models) or "none"
                raise ConfigError(f"no model {label!r} on this page (models: {known})")
            return self._models[label]

    def add_checkpoint(self, path: str | os.PathLike) -> PageModel:
        """Load weights a recipe exported (``final.pt``, ``*.safetensors``) and offer them; the same file
        twice is loaded once. Raises UserError (FileNotFoundError for a missing file) naming the file."""
        from leafseg.eval.methods import ModelSegmenter, Segmenter
        from leafseg.registry import RECIPES, segmenter_from_exported
        from leafseg.training.checkpoint import read_exported

        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: weights not found")
        key = ("checkpoint", str(path.resolve()))
        with self._lock:
            if key in self._sources:
                return self._models[self._sources[key]]
        exported = read_exported(path)
        method = segmenter_from_exported(exported, path, self.device)
        if not isinstance(method, Segmenter):
            method = ModelSegmenter(method)
        method = method.to(self.device).eval()
        recipe = exported["recipe"]
        classes = getattr(method, "class_names", None)
        about = f"{recipe} weights, {RECIPES[recipe][1]}. "
        if classes is None:
            about += "Open vocabulary: it labels the class names you type."
        else:
            about += f"It predicts the {len(classes)} classes it was trained on."
        label = f"{_short(path)} ({recipe})"
        return self._add(key, label, PageModel(label, method, list(classes) if classes else None,
                                               "open" if classes is None else "fixed", about), path)

    def add_method(self, name: str, backbone: str | None = None, weights: str | None = None) -> PageModel:
        """Build a training-free method (:data:`TRAINING_FREE`: a dense CLIP method or "kmeans") on
        ``backbone`` (default: clip_vitb16 for the CLIP methods, pixels8 for kmeans) with ``weights`` (a
        local folder or file; see :func:`leafseg.backbones.build_backbone`) and offer it. Raises UserError
        when the backbone is not on this machine, does not suit the method, or (CLIP) came without a
        tokenizer, which typed class names need."""
        from leafseg.eval.methods import build_method

        if name not in TRAINING_FREE:
            raise ConfigError(f"unknown training-free method {name!r}; known: {', '.join(TRAINING_FREE)}")
        backbone = backbone or ("pixels8" if name == "kmeans" else "clip_vitb16")
        key = (name, backbone, str(weights))
        with self._lock:
            if key in self._sources:
                return self._models[self._sources[key]]
        method = build_method(name, backbone=backbone, weights=weights, device=self.device)
        label = f"{name} ({backbone})"
        if name == "kmeans":
            model = PageModel(label, method, None, "regions", f"k-means of {backbone} features, without training: "
                              "unnamed regions, as many as you ask for.")
        elif getattr(method.encoder, "tokenizer", None) is None:
            raise ConfigError(f"{name}: the {backbone} weights ({weights or 'Hugging Face cache'}) came without a "
                              "CLIP tokenizer, so typed class names cannot be read; use a folder that also holds "
                              "tokenizer.json (or vocab.json and merges.txt)")
        else:
            model = PageModel(label, method, None, "open", f"{CLIP_METHODS[name]} on {backbone}, without "
                              "training. Open vocabulary: it labels the class names you type.")
        return self._add(key, label, model, weights)

    def _add(self, key: tuple, label: str, model: PageModel, source) -> PageModel:
        """Keep ``model`` under ``label``, or under a longer label naming ``source`` if that one is taken."""
        with self._lock:
            if key in self._sources:  # loaded meanwhile by another request
                return self._models[self._sources[key]]
            if label in self._models:
                label = model.label = f"{label} [{source}]"
            self._models[label] = model
            self._sources[key] = label
            return model


def _short(path: Path) -> str:
    """``runs/sseg/final.pt`` -> ``sseg/final.pt``: the file and its folder, enough to tell runs apart."""
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name
