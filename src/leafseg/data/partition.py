"""Federated partitions: a dataset split dealt out to N clients, written as one split file per client.

Three schemes (``make_partition``):

* ``iid``: the samples shuffled (seeded) and dealt into N parts whose sizes differ by at most one.
* ``dirichlet``: label skew on each image's dominant class (the class covering most of its labelled pixels).
  For every class, the clients' shares are drawn from Dirichlet(alpha, ..., alpha) and that class's images
  are cut at those shares (Hsu et al., 2019); draws are repeated until every client holds at least
  ``min_size`` images. Small alpha: each client sees few classes; large alpha: close to iid.
* ``domain``: whole domains per client. A sample's domain is the Cityscapes city (the folder above the
  image), the synthetic world's domain (the first folder under a multi-domain world's root, see
  :mod:`leafseg.data.synthetic_domains`), or for other datasets the folder holding the image. The domains,
  sorted by name, are cut into N contiguous blocks of sizes differing by at most one (Cityscapes' 18
  training cities: 3 clients x 6 cities, 6 x 3, 18 x 1).

On disk (``write_partition``; ``leafseg fed partition DATASET ROOT --scheme S --clients N OUT``)::

    OUT/client_000.txt    one line per sample: ``image_relpath mask_relpath`` (a split file,
    OUT/client_001.txt    relative to the dataset root; ``build_dataset(..., split_file=...)`` reads it)
    OUT/partition.json    dataset, root, split, scheme, alpha, seed, per-client sizes, domains and
                          dominant-class counts

The partitions are a device of the experiment: the dominant classes the ``dirichlet`` scheme reads from
the masks decide who holds which image; nothing about them reaches the clients' training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from leafseg.data.io import DataError
from leafseg.errors import ConfigError
from leafseg.files import atomic_write_text

SCHEMES = ("iid", "dirichlet", "domain")
INDEX_FILE = "partition.json"

__all__ = ["SCHEMES", "Partition", "client_file", "dirichlet_split", "domain_split", "dominant_classes",
           "iid_split", "make_partition", "read_partition", "sample_domain", "write_partition"]


# -- the schemes, on indices -------------------------------------------------------------------------
def iid_split(n: int, clients: int, seed: int = 0) -> list[list[int]]:
    """Indices 0..n-1 shuffled and dealt into ``clients`` parts (sizes differ by at most one), each sorted."""
    _check_clients(clients, n)
    order = np.random.default_rng([seed, 1]).permutation(n)
    return [sorted(int(i) for i in part) for part in np.array_split(order, clients)]


def dirichlet_split(labels: Sequence[int], clients: int, alpha: float, seed: int = 0, min_size: int = 1,
                    max_draws: int = 1000) -> list[list[int]]:
    """Label skew: indices grouped by ``labels`` (one class per sample), each class cut among the clients at
    Dirichlet(alpha) shares; redrawn until every client holds ``min_size`` samples. Parts are sorted."""
    labels = np.asarray(labels, dtype=np.int64)
    _check_clients(clients, len(labels))
    if alpha <= 0:
        raise ConfigError(f"dirichlet: alpha must be > 0, got {alpha}")
    if min_size * clients > len(labels):
        raise ConfigError(f"dirichlet: {len(labels)} samples cannot give {clients} clients {min_size} each")
    rng = np.random.default_rng([seed, 2])
    for _ in range(max_draws):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for c in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(clients, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
            for part, chunk in zip(parts, np.split(members, cuts), strict=True):
                part.extend(int(i) for i in chunk)
        if min(len(p) for p in parts) >= min_size:
            return [sorted(p) for p in parts]
    raise ConfigError(f"dirichlet: no draw in {max_draws} gave every one of {clients} clients {min_size} samples "
                      f"(alpha {alpha}); raise alpha or lower the number of clients")


def domain_split(domains: Sequence[str], clients: int) -> tuple[list[list[int]], list[list[str]]]:
    """Whole domains per client: the sorted domain names cut into ``clients`` contiguous blocks (sizes
    differing by at most one). Returns (indices per client, domain names per client)."""
    names = sorted(set(domains))
    if clients > len(names):
        raise ConfigError(f"domain partition: {clients} clients but only {len(names)} domains ({', '.join(names)}); "
                          f"use at most {len(names)} clients, or --scheme iid / dirichlet")
    _check_clients(clients, len(domains))
    blocks = [list(b) for b in np.array_split(np.array(names, dtype=object), clients)]
    owner = {name: i for i, block in enumerate(blocks) for name in block}
    parts: list[list[int]] = [[] for _ in range(clients)]
    for i, d in enumerate(domains):
        parts[owner[d]].append(i)
    return parts, [[str(n) for n in b] for b in blocks]


def _check_clients(clients: int, n: int) -> None:
    if clients < 1:
        raise ConfigError(f"need at least one client, got {clients}")
    if clients > n:
        raise ConfigError(f"{clients} clients but only {n} samples to share")


# -- what the schemes read off a dataset -----------------------------------------------------------------
def sample_domain(dataset: str, image: str | os.PathLike, root: str | os.PathLike) -> str:
    """The domain of one sample (see the module docstring): Cityscapes' city, a multi-domain synthetic
    world's domain, else the folder holding the image."""
    from leafseg.data.synthetic_domains import is_domain_world

    image, root = Path(image), Path(root)
    if dataset == "synthetic" and is_domain_world(root):
        return image.relative_to(root).parts[0]
    return image.parent.name


def dominant_classes(dataset) -> list[int]:
    """Each sample's dominant class: the most frequent label of its mask (ignored pixels left out; a mask
    without labelled pixels counts as class -1). ``dataset``: a SegmentationDataset; only masks are read."""
    from leafseg.data.datasets.labels import map_labels
    from leafseg.data.io import read_mask

    out = []
    for _, mask_path in dataset.samples:
        labels, _ = map_labels(read_mask(mask_path), dataset.lut_for(mask_path), dataset.num_classes,
                               dataset.ignore_index)
        counts = np.bincount(labels[labels != dataset.ignore_index].ravel(), minlength=dataset.num_classes)
        out.append(int(counts.argmax()) if counts.sum() else -1)
    return out


# -- a partition of a dataset, on disk ---------------------------------------------------------------------
@dataclass
class Partition:
    """Per client, the (image, mask) paths relative to the dataset root, and what made the partition."""

    clients: list[list[tuple[str, str]]]
    meta: dict = field(default_factory=dict)


def make_partition(dataset: str, root: str | os.PathLike, *, scheme: str, clients: int, split: str = "train",
                   alpha: float = 0.5, seed: int = 0, min_size: int = 1, options: dict | None = None) -> Partition:
    """Deal split ``split`` of dataset ``dataset`` at ``root`` to ``clients`` clients by ``scheme``."""
    from leafseg.data.datasets import build_dataset

    if scheme not in SCHEMES:
        raise ConfigError(f"unknown partition scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    data = build_dataset(dataset, root, split, **(options or {}))
    base = data.root
    rel = [(Path(i).relative_to(base).as_posix(), Path(m).relative_to(base).as_posix()) for i, m in data.samples]
    meta = {"dataset": dataset, "root": str(root), "split": split, "scheme": scheme, "clients": clients,
            "alpha": alpha if scheme == "dirichlet" else None, "seed": seed, "options": options or {}}
    dominant = dominant_classes(data) if scheme == "dirichlet" else None
    if scheme == "iid":
        parts = iid_split(len(rel), clients, seed)
    elif scheme == "dirichlet":
        parts = dirichlet_split(dominant, clients, alpha, seed, min_size)
    else:
        domains = [sample_domain(dataset, i, base) for i, _ in data.samples]
        parts, blocks = domain_split(domains, clients)
        meta["domains"] = blocks
    meta["sizes"] = [len(p) for p in parts]
    if dominant is not None:
        meta["dominant_class_counts"] = [np.bincount([dominant[i] for i in p if dominant[i] >= 0],
                                                     minlength=data.num_classes).tolist() for p in parts]
    meta["classes"] = list(data.classes)
    return Partition([[rel[i] for i in p] for p in parts], meta)


def client_file(folder: str | os.PathLike, client: int) -> Path:
    """The split file of client ``client`` in a partition folder."""
    return Path(folder) / f"client_{client:03d}.txt"


def write_partition(partition: Partition, out: str | os.PathLike) -> Path:
    """Write the per-client split files and ``partition.json`` into ``out`` (atomically); returns ``out``.
    A folder holding another partition's files is refused."""
    out = Path(out)
    if (out / INDEX_FILE).exists() or any(out.glob("client_*.txt")):
        raise ConfigError(f"{out} already holds a partition; choose another folder or remove it")
    out.mkdir(parents=True, exist_ok=True)
    for i, pairs in enumerate(partition.clients):
        atomic_write_text(client_file(out, i), "".join(f"{img} {mask}\n" for img, mask in pairs))
    atomic_write_text(out / INDEX_FILE, json.dumps(partition.meta, indent=2) + "\n")
    return out


def read_partition(folder: str | os.PathLike) -> dict:
    """``partition.json`` of a partition folder, checked against its client files."""
    folder = Path(folder)
    index = folder / INDEX_FILE
    if not index.is_file():
        raise DataError(f"{index}: not found; {folder} is not a partition folder (write one with "
                        f"`leafseg fed partition`)")
    meta = json.loads(index.read_text(encoding="utf-8"))
    missing = [client_file(folder, i).name for i in range(int(meta["clients"]))
               if not client_file(folder, i).is_file()]
    if missing:
        raise DataError(f"{folder}: client files missing: {', '.join(missing)}")
    return meta
