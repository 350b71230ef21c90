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

The steps are public so that the page of ``leafseg serve`` runs the same code on an image in memory:
:func:`model_class_names` (the names a model labels with), :func:`predict_labels` (:func:`prepare_for_labels`
then :func:`label_image`: one image's label map, for a cluster method too) and :func:`render_segmentation`
(the overlay with its legend, and the class table) that :func:`write_segmentation` writes.
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
MAX_CLASSES = 255  # label maps are uint8


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


def model_class_names(method, classes: Sequence[str] | None, model: str,
                      option: str | None = "--classes") -> list[str]:
    """The class names ``method`` labels with: its own (a closed-vocabulary model) or ``classes`` (an
    open-vocabulary one; entries, synonyms comma-separated). Raises ConfigError, naming ``model`` (and the
    command-line ``option`` that takes the names, if any), when an open-vocabulary model gets no names or a
    closed-vocabulary one gets names other than its own."""
    own = getattr(method, "class_names", None)
    where = f" ({option})" if option else ""
    if own is None and not classes:
        raise ConfigError(f"{model} is an open-vocabulary model: give class names, e.g. 'cat,dog,grass'{where}")
    if own is not None and classes and list(classes) != list(own):
        raise ConfigError(f"{model} predicts its own {len(own)} classes ({', '.join(own)}); leave out the "
                          f"class names{where}")
    return list(classes or own)


def segment_images(image_paths: Sequence[str | Path], method, out_dir: str | Path, *,
                   classes: Sequence[str] | None = None, templates: str = "single", bg_threshold: float | None = None,
                   alpha: float = DEFAULT_ALPHA, device: str = "cpu", source: str = "the method") -> list[dict]:
    """Label every image at its own resolution and write each with :func:`write_segmentation`.

    method: a harness method (logits (B, Q, h, w)), prepared once for all the images; classes: entries
    (synonyms comma-separated) or None for a closed-vocabulary model's own; source: how errors name the
    model. bg_threshold: if set, pixels whose best class probability is below it get label 0 "background"
    and the classes are numbered from 1. alpha: opacity of the class colours in the overlay, in [0, 1].
    Returns one {"labels", "overlay", "classes"} dict of paths per image.
    """
    from leafseg.data.io import read_image

    check_alpha(alpha)
    stems = [Path(p).stem for p in image_paths]
    if len(set(stems)) != len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})
        raise ConfigError(f"images share a file name ({', '.join(twice)}): their outputs would overwrite each other")
    names = model_class_names(method, classes, source, option="--classes or --classes-file")
    label_names = prepare_for_labels(method, names, templates=templates, bg_threshold=bg_threshold, device=device)
    written = []
    for path, stem in zip(image_paths, stems, strict=True):
        image = read_image(path)
        labels = label_image(method, image, len(names), bg_threshold=bg_threshold, device=device)
        written.append(write_segmentation(out_dir, stem, image, labels, label_names, alpha=alpha))
    return written


def predict_labels(method, image: np.ndarray, names: list[str], *, templates: str = "single",
                   bg_threshold: float | None = None, max_side: int | None = None,
                   device: str = "cpu") -> tuple[np.ndarray, list[str]]:
    """One image's label map from a harness method (:mod:`leafseg.eval.methods`), at the image's size:
    :func:`prepare_for_labels` with ``names``, then :func:`label_image`.

    image (H, W, 3) uint8. Returns (labels (H, W) uint8, the names of the label values).
    """
    label_names = prepare_for_labels(method, names, templates=templates, bg_threshold=bg_threshold, device=device)
    labels = label_image(method, image, len(names), bg_threshold=bg_threshold, max_side=max_side, device=device)
    return labels, label_names


def prepare_for_labels(method, names: Sequence[str], *, templates: str = "single", bg_threshold: float | None = None,
                       device: str = "cpu") -> list[str]:
    """Make ``method`` ready for :func:`label_image`: moved to ``device`` in eval mode and prepared with
    ``names`` under ``templates`` (a logits method: one entry per class, synonyms comma-separated) or with
    ``len(names)`` regions (a cluster method, kmeans). Returns the names of the label values: ``names``,
    after "background" when ``bg_threshold`` is set. Raises ConfigError for no names or more than a uint8
    label map holds, and for a background threshold on a cluster method (it has no class scores)."""
    from leafseg.eval.protocol import Protocol

    if not 1 <= len(names) + (bg_threshold is not None) <= MAX_CLASSES:
        raise ConfigError(f"{len(names)} class names: a label map holds 1 to {MAX_CLASSES} classes")
    if getattr(method, "outputs", "logits") == "clusters" and bg_threshold is not None:
        raise ConfigError("a background threshold needs class scores; a cluster method (kmeans) has none")
    if hasattr(method, "to"):
        method.to(device).eval()
    method.prepare(list(names), Protocol(templates=templates))
    return ["background", *names] if bg_threshold is not None else list(names)


def label_image(method, image: np.ndarray, num_classes: int, *, bg_threshold: float | None = None,
                max_side: int | None = None, device: str = "cpu") -> np.ndarray:
    """The label map of one image from a method :func:`prepare_for_labels` made ready for ``num_classes``.

    image (H, W, 3) uint8. A logits method's scores are resized to (H, W), reduced to one channel per class
    (the best of a class's names) and the best class wins; below ``bg_threshold`` (if set) a pixel gets
    label 0 "background" and the classes are numbered from 1. A cluster method's ids are the labels.
    max_side: if set, the model sees the image resized so that its longer side is at most this many
    pixels (the labels are still (H, W)). Returns labels (H, W) uint8.
    """
    from leafseg.eval.prompts import reduce_queries

    x = _model_input(image, max_side).to(device)
    size = image.shape[:2]
    with torch.no_grad():
        scores = method(x)
        if getattr(method, "outputs", "logits") == "clusters":
            ids = F.interpolate(scores[:, None].float(), size=size, mode="nearest")[0, 0]
            return ids.to(torch.uint8).cpu().numpy()
        scores = F.interpolate(scores.float(), size=size, mode="bilinear", align_corners=False)
    probs = scores if getattr(method, "activation", "softmax") == "identity" else scores.softmax(1)
    probs = reduce_queries(probs, getattr(method, "query_classes", None), num_classes)[0]
    best, labels = probs.max(0)
    if bg_threshold is not None:
        labels = torch.where(best < bg_threshold, torch.zeros_like(labels), labels + 1)
    return labels.to(torch.uint8).cpu().numpy()


def _model_input(image: np.ndarray, max_side: int | None) -> torch.Tensor:
    """image (H, W, 3) uint8 -> (1, 3, h, w) float in [0, 1], shrunk (antialiased) so that max(h, w) <=
    ``max_side`` when that is set and the image is larger."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255)[None]
    h, w = image.shape[:2]
    if max_side is not None and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return x


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


def render_segmentation(image: np.ndarray, labels: np.ndarray, names: list[str], *,
                        alpha: float = DEFAULT_ALPHA) -> tuple[np.ndarray, list[dict]]:
    """The picture and the table of one image's segmentation.

    image (H, W, 3) uint8, labels (H, W) uint8 with values < len(names). Returns (picture, table): the
    class colours (:func:`~leafseg.data.io.palette`) blended over the image with opacity ``alpha`` at the
    image's own resolution, with a legend (colour and name) of the classes present to its right, as
    (H', W', 3) uint8 with H' >= H and W' > W; and :func:`class_table`.
    """
    from leafseg.data.io import palette
    from leafseg.eval.report import overlay, with_legend

    alpha = check_alpha(alpha)
    colours = palette(len(names))
    present = [int(i) for i in np.unique(labels) if i < len(names)]
    picture = with_legend(overlay(image, labels, colours, alpha=alpha), [names[i] for i in present],
                          colours[present])
    return picture, class_table(labels, names, colours)


def write_segmentation(out_dir: str | Path, stem: str, image: np.ndarray, labels: np.ndarray, names: list[str], *,
                       alpha: float = DEFAULT_ALPHA) -> dict:
    """Write one image's segmentation to ``out_dir``:

    * ``<stem>_labels.png``: palette PNG of the class indices, (H, W) like the image;
    * ``<stem>_overlay.png``: the picture of :func:`render_segmentation` (the class colours blended over
      the image with opacity ``alpha``, at the image's own resolution, and to its right a legend of the
      classes present);
    * ``<stem>_classes.json``: :func:`class_table`, a list with each class's index, name, colour and share.

    image (H, W, 3) uint8, labels (H, W) uint8 with values < len(names). Returns {"labels", "overlay",
    "classes"} paths.
    """
    from leafseg.data.io import palette, write_image, write_mask
    from leafseg.files import atomic_write_text

    picture, table = render_segmentation(image, labels, names, alpha=alpha)
    out = Path(out_dir)
    paths = {"labels": out / f"{stem}_labels.png", "overlay": out / f"{stem}_overlay.png",
             "classes": out / f"{stem}_classes.json"}
    write_mask(paths["labels"], labels, palette(len(names)))
    write_image(paths["overlay"], picture)
    atomic_write_text(paths["classes"], json.dumps(table, indent=1) + "\n")
    return paths
