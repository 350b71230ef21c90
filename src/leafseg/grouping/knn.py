"""Nearest-neighbour tables of a dataset's images under a frozen encoder (STEGO's k-NN pairs).

Every image is one vector, the global average of the encoder's patch features (unit length); its neighbours
are the ``k`` other images of highest cosine. The table is computed once, on the encoder's device, in blocks
of rows, and cached beside the data, named by what it depends on: the encoder (its name and a digest of its
weights), the layer, the input resolution, the dataset (a fingerprint of its files) and k. Another backbone,
resolution or image list gives another file, so a stale table is never read.

    table = knn_table(encoder, views, k=7, cache_dir="data/coco/knn", fingerprint=views.fingerprint(),
                      resolution=224)          # (N, 7) int64, row i: the neighbours of image i, nearest first
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

__all__ = ["knn_cache_path", "knn_table", "nearest_neighbours", "pooled_features"]


@torch.no_grad()
def pooled_features(encoder, dataset, *, layer: int = -1, batch_size: int = 64, num_workers: int = 0,
                    device=None, progress: bool = True) -> Tensor:
    """(N, C) unit-length global averages of ``encoder.features`` patch maps, one row per dataset item.

    dataset items are dicts with ``image`` (3, S, S) in [0, 1] (one size for all)."""
    device = torch.device(device) if device is not None else encoder.device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=lambda items: torch.stack([it["image"] for it in items]))
    rows = []
    for images in tqdm(loader, desc="knn features", unit="batch", disable=not progress):
        maps = encoder.features(images.to(device), layers=(layer,)).maps[0]
        rows.append(F.normalize(maps.float().mean(dim=(2, 3)), dim=1))
    return torch.cat(rows)


@torch.no_grad()
def nearest_neighbours(features: Tensor, k: int, block: int = 4096) -> Tensor:
    """The ``k`` rows of highest cosine to each row, itself excluded, nearest first.

    features (N, C), unit rows -> (N, k) int64 on their device. Rows are compared ``block`` at a time."""
    n = features.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} images, got {k}")
    out = []
    for start in range(0, n, block):
        sims = features[start:start + block] @ features.T  # (b, N)
        rows = torch.arange(sims.shape[0], device=sims.device)
        sims[rows, rows + start] = -float("inf")
        out.append(sims.topk(k, dim=1).indices)
    return torch.cat(out)


def knn_cache_path(cache_dir: str | os.PathLike, key: dict) -> Path:
    """The table file for ``key`` (encoder, layer, resolution, fingerprint, k) in ``cache_dir``."""
    tag = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir) / f"knn_{tag}.safetensors"


def knn_table(encoder, dataset, *, k: int, cache_dir: str | os.PathLike, fingerprint: str, resolution: int,
              layer: int = -1, batch_size: int = 64, num_workers: int = 0, device=None,
              progress: bool = True) -> Tensor:
    """(N, k) int64 (CPU): the ``k`` nearest other images of every item of ``dataset``, read from the cache in
    ``cache_dir`` when a table of the same encoder, layer, ``resolution``, dataset ``fingerprint`` and ``k``
    is there, else computed (:func:`pooled_features`, :func:`nearest_neighbours`) and written (atomically)."""
    from safetensors.torch import load_file, save

    from leafseg.files import atomic_write
    from leafseg.training.checkpoint import state_digest

    key = {"encoder": getattr(encoder, "name", type(encoder).__name__), "weights": state_digest(encoder),
           "layer": int(layer), "resolution": int(resolution), "dataset": fingerprint, "k": int(k),
           "items": len(dataset)}
    path = knn_cache_path(cache_dir, key)
    if path.is_file():
        try:
            table = load_file(str(path))["neighbours"]
        except Exception:  # noqa: BLE001 - an unreadable cache file is recomputed and replaced
            table = None
        if table is not None and table.shape == (len(dataset), k):
            return table
    feats = pooled_features(encoder, dataset, layer=layer, batch_size=batch_size, num_workers=num_workers,
                            device=device, progress=progress)
    table = nearest_neighbours(feats, k).cpu()
    meta = {k_: str(v) for k_, v in key.items()}
    try:
        atomic_write(path, lambda f: f.write(save({"neighbours": table.contiguous()}, metadata=meta)))
    except OSError as err:
        raise OSError(f"cannot write the k-NN table to {path.parent} ({err.strerror}); set knn.cache_dir to a "
                      "writable folder") from err
    return table
