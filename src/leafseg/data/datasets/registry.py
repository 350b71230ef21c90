"""Datasets by short registry name: ``build_dataset("voc", root, "val")``.

Each benchmark file registers a reader ``reader(root, **options) -> Layout`` under one or
more names; :func:`build_dataset` resolves the layout, lists the split (or reads a split
file) and returns a :class:`SegmentationDataset`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from leafseg.data.datasets.base import SegmentationDataset
from leafseg.data.datasets.layout import Layout, Listing
from leafseg.data.datasets.splits import read_split_file
from leafseg.data.io import DataError
from leafseg.errors import ConfigError

Reader = Callable[..., Layout]


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its name, reader, one-line summary and accepted options."""

    name: str
    reader: Reader
    summary: str

    @property
    def options(self) -> tuple[str, ...]:
        params = list(inspect.signature(self.reader).parameters.values())[1:]
        return tuple(p.name for p in params)


_REGISTRY: dict[str, DatasetEntry] = {}


def register(name: str, summary: str) -> Callable[[Reader], Reader]:
    """Decorator: register ``reader(root, **options) -> Layout`` under ``name``."""

    def wrap(reader: Reader) -> Reader:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is already registered")
        _REGISTRY[name] = DatasetEntry(name, reader, summary)
        return reader

    return wrap


def list_datasets() -> list[str]:
    """Registry names of all datasets, sorted."""
    return sorted(_REGISTRY)


def dataset_entry(name: str) -> DatasetEntry:
    """The registry entry of ``name``; an unknown name raises ConfigError listing the known ones."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    return _REGISTRY[name]


def open_layout(name: str, root: str | os.PathLike, **options) -> Layout:
    """Resolve the folder layout of dataset ``name`` at ``root`` (options as in :func:`build_dataset`)."""
    entry = dataset_entry(name)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        accepted = ", ".join(entry.options) or "none"
        raise ConfigError(f"dataset {name!r} does not take option(s) {', '.join(unknown)} (--data-option); "
                          f"it takes: {accepted}")
    return entry.reader(Path(root), **options)


def build_dataset(name: str, root: str | os.PathLike, split: str | None = None, *, on_error: str = "stop",
                  split_file: str | os.PathLike | None = None, transform: Callable[[dict], dict] | None = None,
                  **options) -> SegmentationDataset:
    """The samples of one split of dataset ``name`` stored at ``root``.

    split: the split name (default ``"val"``); with ``split_file``, the pairs listed in that
    file (``image_relpath mask_relpath`` per line, relative to the resolved root) are used
    exactly, and the split is named after the file unless ``split`` is given.
    on_error: ``"stop"`` or ``"skip"`` (see :mod:`leafseg.data.datasets.base`).
    options: the dataset's own options (see ``docs/datasets.md``); unknown ones raise ConfigError.
    Layout problems raise DataError naming the path and showing the expected folder tree.
    """
    layout = open_layout(name, root, **options)
    if split_file is not None:
        samples = read_split_file(split_file, layout.root, strip_prefix=layout.split_file_prefix)
        listing = Listing(samples, [], layout.name_root, layout.name_suffix)
        split = split or Path(split_file).stem
    else:
        split = split or "val"
        listing = layout.list_split(split)
        if not listing.samples:
            raise DataError(f"{layout.root}: split {split!r} of {name} has no samples; check the root and split.")
    return SegmentationDataset(
        listing.samples, layout.classes, name=name, root=layout.root, split=split, label_map=layout.label_map,
        has_background=layout.has_background, ignore_index=layout.ignore_index, on_error=on_error,
        transform=transform, name_root=listing.name_root, name_suffix=listing.name_suffix,
        unpaired_masks=listing.unpaired_masks)
