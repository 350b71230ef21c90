"""Generic folders of images and index masks, and the synthetic world's folders.

``folder``: an image folder and a mask folder (``{split}`` in either path is replaced by the
split name), masks paired with images by file stem (mask stem = image stem + ``mask_suffix``),
class names given as a list, a count, or a text / JSON file.
``synthetic``: a folder written by ``SyntheticWorld.write`` (``images/<split>/``,
``masks/<split>/``, ``captions.jsonl``, ``classes.json``), or a multi-domain world of such folders
(``domains.json``, see :mod:`leafseg.data.synthetic_domains`): the union of its domains' scenes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from leafseg.data.datasets.labels import reduce_zero_label_lut
from leafseg.data.datasets.layout import Layout, Listing, layout_error, pair_by_name, require_dir
from leafseg.data.datasets.registry import register
from leafseg.data.io import DataError, list_images
from leafseg.data.synthetic_domains import domain_layouts, is_domain_world
from leafseg.data.synthetic_layout import load_synthetic
from leafseg.errors import ConfigError

FOLDER_TREE = """\
<root>/
  <image_dir>/<name>.<jpg|png|...>     # default image_dir: images ('{split}' is replaced by the split)
  <mask_dir>/<name><mask_suffix>.png   # default mask_dir: masks; index masks, 255 = ignore"""

SYNTHETIC_TREE = """\
<root>/
  images/<split>/<name>.png
  masks/<split>/<name>.png
  captions.jsonl
  classes.json
or a multi-domain world: <root>/domains.json and one such folder per domain, <root>/<domain>/"""


def resolve_classes(classes: Sequence[str] | int | str | Path | None, root: Path) -> tuple[str, ...]:
    """Class names from a list, a count (``class_0``, ...), or a file (JSON list, or one name per line).

    A file path may be absolute or relative to ``root``.
    """
    if classes is None:
        raise ConfigError("the folder dataset needs classes=: a list of names, a count, or a file of names")
    if isinstance(classes, bool):
        raise ConfigError(f"classes must be names, a count or a file, got {classes!r}")
    if isinstance(classes, int):
        if classes < 1 or classes > 255:
            raise ConfigError(f"classes must be a count in 1..255, got {classes}")
        return tuple(f"class_{i}" for i in range(classes))
    if isinstance(classes, str | Path):
        path = Path(classes) if Path(classes).is_absolute() else root / classes
        if not path.is_file():
            raise DataError(f"{path}: class-name file not found (JSON list, or one name per line).")
        text = path.read_text(encoding="utf-8")
        try:
            names = json.loads(text) if path.suffix == ".json" else [ln.strip() for ln in text.splitlines()]
        except ValueError as exc:
            raise DataError(f"{path}: malformed class-name file ({exc}).") from exc
        names = [n for n in names if n] if isinstance(names, list) else names
        if not isinstance(names, list) or not names:
            raise DataError(f"{path}: expected a list of class names.")
        return tuple(str(n) for n in names)
    names = tuple(str(c) for c in classes)
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"classes must be a non-empty list of distinct names, got {list(classes)}")
    return names


def _stems(folder: Path, suffix: str = "") -> dict[str, Path]:
    """``{stem without suffix: path}`` of the images in ``folder``; two files with one stem raise DataError."""
    out: dict[str, Path] = {}
    for p in list_images(folder):
        if suffix and not p.stem.endswith(suffix):
            continue
        key = p.stem[: len(p.stem) - len(suffix)]
        if key in out:
            raise DataError(f"{p}: two files share the name {key!r} ({out[key].name}); keep one.")
        out[key] = p
    return out


@register("folder", "a generic image folder + index-mask folder with given class names")
def folder(root: Path, classes: Sequence[str] | int | str | None = None, image_dir: str = "images",
           mask_dir: str = "masks", mask_suffix: str = "", reduce_zero_label: bool = False,
           has_background: bool = False) -> Layout:
    """image_dir / mask_dir: folders relative to the root (``{split}`` is replaced by the split name).
    classes: names in label order, a count, or a file of names. mask_suffix: mask stem = image stem + it.
    reduce_zero_label: stored 0 -> 255, v -> v - 1. has_background: class 0 is a background class."""
    root = Path(root)
    if not root.is_dir():
        raise layout_error(root, "dataset root folder not found", FOLDER_TREE)
    names = resolve_classes(classes, root)

    def list_split(split: str) -> Listing:
        img_dir = require_dir(root / image_dir.format(split=split), "image", FOLDER_TREE)
        ann_dir = require_dir(root / mask_dir.format(split=split), "mask", FOLDER_TREE)
        listing = pair_by_name(_stems(img_dir), _stems(ann_dir, mask_suffix),
                               lambda k: ann_dir / f"{k}{mask_suffix}.png")
        listing.name_root = img_dir
        return listing

    return Layout(root, names, has_background, reduce_zero_label_lut() if reduce_zero_label else None, list_split)


@register("synthetic", "the procedural synthetic world written by SyntheticWorld.write (or `leafseg synth`)")
def synthetic(root: Path) -> Layout:
    """Splits are the ones written (train, val, test)."""
    if is_domain_world(root):
        return _synthetic_domains(Path(root))
    try:
        meta = load_synthetic(root)
    except DataError as err:
        raise layout_error(Path(root), f"not a synthetic-world folder: {err}", SYNTHETIC_TREE) from err
    base = meta.root

    def list_split(split: str) -> Listing:
        records = meta.split(split)
        if not records:
            found = sorted({r["split"] for r in meta.records})
            raise layout_error(base / "captions.jsonl", f"no scenes of split {split!r} (found: {', '.join(found)})",
                               SYNTHETIC_TREE)
        samples = [(base / r["image"], base / r["mask"]) for r in records]
        return Listing(samples, name_root=base / "images" / split)

    return Layout(base, tuple(meta.classes), False, None, list_split, name_root=base / "images",
                  ignore_index=meta.ignore_index)


def _synthetic_domains(root: Path) -> Layout:
    """A multi-domain world: a split is the union of every domain's scenes of that split, domain by domain."""
    try:
        domains = domain_layouts(root)
    except DataError as err:
        raise layout_error(root, f"not a multi-domain synthetic world ({err})", SYNTHETIC_TREE) from err

    def list_split(split: str) -> Listing:
        samples = [(layout.root / r["image"], layout.root / r["mask"]) for _, layout in domains
                   for r in layout.split(split)]
        if not samples:
            raise layout_error(root / domains[0][0], f"no scenes of split {split!r} in any domain", SYNTHETIC_TREE)
        return Listing(samples, name_root=root)

    first = domains[0][1]
    return Layout(root, tuple(first.classes), False, None, list_split, name_root=root,
                  ignore_index=first.ignore_index)
