"""A synthetic world of several domains in one folder: the non-iid sites of a federated run.

A folder written by :meth:`SyntheticWorld.write` holds one domain (its generator settings are checked
when scenes are added). A multi-domain world is a folder of such worlds, one subfolder per domain, and an
index naming them::

    root/domains.json                  {"domains": ["domain0", "domain1", ...], "generator": {...}}
    root/<domain>/classes.json         an ordinary synthetic world (same classes in every domain)
    root/<domain>/captions.jsonl
    root/<domain>/images/<split>/<name>.png
    root/<domain>/masks/<split>/<name>.png

Domain ``k`` draws its scenes from world seed ``seed + k`` with :class:`Domain` ``k`` (a colour shift and a
class mix, see :func:`random_domains`), so every domain has its own scenes. The dataset reader
``build_dataset("synthetic", root, split)`` reads the union of the domains' scenes of ``split``; a sample's
domain is the first folder of its path under the root. Single-domain folders and their scenes are unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from leafseg.data.io import DataError
from leafseg.data.synthetic_layout import SyntheticLayout, load_synthetic
from leafseg.files import atomic_write_text

DOMAINS_FILE = "domains.json"

__all__ = ["DOMAINS_FILE", "domain_layouts", "is_domain_world", "write_domain_world"]


def is_domain_world(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds a multi-domain world (its ``domains.json``)."""
    return (Path(root) / DOMAINS_FILE).is_file()


def write_domain_world(root: str | os.PathLike, domains: int | Sequence, *, train: int, val: int = 0,
                       size: int = 64, seed: int = 0, strength: float = 1.0) -> Path:
    """Write ``train`` (and ``val``) scenes of every domain under ``root``; returns ``root``.

    domains: a number of domains (``random_domains(n, seed, strength)``) or a list of
    :class:`~leafseg.data.synthetic.Domain` (distinct names). A root already holding these domains with at
    least these scene counts is left as it is; one holding other domains is refused (ValueError).
    """
    from dataclasses import asdict

    from leafseg.data.synthetic import SyntheticWorld, random_domains

    root = Path(root)
    chosen = random_domains(domains, seed=seed, strength=strength) if isinstance(domains, int) else list(domains)
    names = [d.name for d in chosen]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"domains need distinct names, got {names}")
    generator = {"seed": seed, "size": size, "domains": [asdict(d) for d in chosen]}
    index = root / DOMAINS_FILE
    if index.is_file():
        old = json.loads(index.read_text(encoding="utf-8"))
        if old.get("generator") != generator:
            raise ValueError(f"{root} holds another multi-domain world ({old.get('domains')}); write this one "
                             f"to another folder")
    for k, domain in enumerate(chosen):
        world = SyntheticWorld(seed=seed + k, size=size, domain=domain)
        folder = root / domain.name
        have = load_synthetic(folder) if (folder / "classes.json").is_file() else None
        for split, n in (("train", train), ("val", val)):
            if n and (have is None or len(have.split(split)) < n):
                world.write(folder, n, split)
    atomic_write_text(index, json.dumps({"domains": names, "generator": generator}, indent=2) + "\n")
    return root


def domain_layouts(root: str | os.PathLike) -> list[tuple[str, SyntheticLayout]]:
    """(name, layout) of every domain of the multi-domain world at ``root``, in index order."""
    root = Path(root)
    try:
        names = list(json.loads((root / DOMAINS_FILE).read_text(encoding="utf-8"))["domains"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{root / DOMAINS_FILE}: not a multi-domain index ({err}); re-write the world") from err
    layouts = [(name, load_synthetic(root / name)) for name in names]
    classes = {tuple(layout.classes) for _, layout in layouts}
    if len(classes) > 1:
        raise DataError(f"{root}: the domains have different class lists; re-write the world")
    return layouts
