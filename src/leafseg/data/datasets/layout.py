"""What every benchmark reader shares: the resolved layout, root finding, id lists, pairing by name.

A reader (one per benchmark file: pascal.py, coco.py, ...) turns a root folder and its options
into a :class:`Layout`; ``Layout.list_split(split)`` then lists a split's samples. Layout
errors raise :class:`~leafseg.data.io.DataError` naming the path and showing the expected tree.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from leafseg.data.datasets.base import LabelMap
from leafseg.data.datasets.labels import IGNORE_INDEX
from leafseg.data.io import DataError

Pair = tuple[Path, Path]


@dataclass
class Listing:
    """One split's samples: (image, mask) pairs, masks without images, and how names are formed."""

    samples: list[Pair]
    unpaired_masks: list[Path] = field(default_factory=list)
    name_root: Path | None = None
    name_suffix: str = ""


@dataclass
class Layout:
    """A benchmark folder resolved by its reader.

    root: the folder split-file paths are relative to. label_map: see SegmentationDataset.
    list_split: split name -> Listing (raises DataError for a missing split).
    name_root / name_suffix: how sample names are formed for split-file samples.
    split_file_prefix: a prefix stripped from split-file paths (CamVid's ``/SegNet/CamVid/``).
    """

    root: Path
    classes: tuple[str, ...]
    has_background: bool
    label_map: LabelMap
    list_split: Callable[[str], Listing]
    name_root: Path | None = None
    name_suffix: str = ""
    split_file_prefix: str = ""
    ignore_index: int = IGNORE_INDEX


def layout_error(path: Path, problem: str, tree: str) -> DataError:
    """A DataError naming ``path`` and the problem, followed by the expected folder tree."""
    return DataError(f"{path}: {problem}. Expected layout:\n{tree.rstrip()}")


def find_root(root: str | os.PathLike, markers: Sequence[str], parents: Sequence[str], tree: str,
              what: str) -> Path:
    """The folder holding any of ``markers``: ``root`` itself or ``root/<p>`` for ``p`` in ``parents``.

    So a VOC root may be given as ``.../VOC2012``, ``.../VOCdevkit`` or the folder above it.
    """
    root = Path(root)
    if not root.is_dir():
        raise layout_error(root, f"{what} root folder not found", tree)
    for candidate in [root, *(root / p for p in parents)]:
        if any((candidate / m).exists() for m in markers):
            return candidate
    raise layout_error(root, f"not a {what} folder (none of {', '.join(markers)} found here"
                       + (f" or under {', '.join(parents)}" if parents else "") + ")", tree)


def require_dir(path: Path, what: str, tree: str) -> Path:
    """``path`` if it is a folder, else a layout DataError listing the folders next to it."""
    if path.is_dir():
        return path
    parent = path.parent
    there = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
    hint = f" (found: {', '.join(there)})" if there else ""
    raise layout_error(path, f"{what} folder not found{hint}", tree)


def read_ids(path: Path, tree: str) -> list[str]:
    """Sample ids of an id-list file (one per line, blank lines ignored, duplicates dropped, order kept)."""
    if not path.is_file():
        there = sorted(p.name for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        hint = f" (found: {', '.join(there)})" if there else ""
        raise layout_error(path, f"split list not found{hint}", tree)
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return list(dict.fromkeys(i for i in ids if i))


def split_folder(split: str, aliases: dict[str, str]) -> str:
    """The on-disk folder name of a split (``val`` -> ``val2017``); unknown names pass through."""
    return aliases.get(split, split)


def files_ending(folder: Path, ending: str, exclude: Iterable[str] = ()) -> dict[str, Path]:
    """``{name without ending: path}`` for the files in ``folder`` whose name ends with ``ending``.

    Names containing any of ``exclude`` are left out (e.g. converted masks beside raw ones).
    """
    exclude = tuple(exclude)
    out = {}
    if folder.is_dir():
        for entry in os.scandir(folder):
            name = entry.name
            if name.endswith(ending) and not any(x in name for x in exclude) and entry.is_file():
                out[name[: -len(ending)]] = Path(entry.path)
    return out


def pair_by_name(images: dict[str, Path], masks: dict[str, Path], mask_path: Callable[[str], Path]) -> Listing:
    """Pair images and masks that share a key; an image without a mask gets its expected mask path.

    images / masks: ``{key: path}``; mask_path: key -> where its mask should be. Samples are
    sorted by key, so an image whose mask is missing fails (or is skipped) when it is read.
    """
    samples = [(images[k], masks.get(k, mask_path(k))) for k in sorted(images)]
    unpaired = [masks[k] for k in sorted(set(masks) - set(images))]
    return Listing(samples, unpaired)
