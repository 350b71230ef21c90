"""The smallest FUSS runs the tests make: a two-domain synthetic world at 32 px (6 train + 4 validation scenes
per domain), a 1-block width-32 ViT with random weights, an 8-dimensional head, 6 centroids, 3 local steps, the
correspondence loss at 4 x 4 points (the features are 4 x 4)."""

from __future__ import annotations

from pathlib import Path

import yaml

TINY = {
    "data": {"size": 32, "synthetic": {"domains": 2, "train": 6, "val": 4, "size": 32}},
    "model": {"backbone": "dino_vits8", "weights": "random", "code_dim": 8, "clusters": 6,
              "arch_overrides": {"patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1,
                                 "num_attention_heads": 2, "intermediate_size": 64}},
    "local": {"steps": 3, "batch_size": 4, "knn": 2, "loss": {"feature_samples": 4}},
    "federation": {"clients": 2, "rounds": 2, "round_timeout": 120},
    "eval": {"preset": "stego", "protocol": {"center_crop": None, "batch_size": 8, "workers": 0}},
    "progress": False, "threads": 1,
}


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_values(world: Path, out: Path, **sections) -> dict:
    """The tiny config as a mapping, the world at ``world`` and the run in ``out``; ``sections`` merge over it."""
    values = _merge(TINY, {"data": {"root": str(world)}, "out_dir": str(out)})
    return _merge(values, sections)


def write_tiny_config(path: Path, world: Path, out: Path, **sections) -> Path:
    """The tiny config written as a YAML file at ``path``."""
    path.write_text(yaml.safe_dump(tiny_values(world, out, **sections), sort_keys=False))
    return path


def tiny_config(world: Path, out: Path, **sections):
    """The tiny config as a checked FussConfig."""
    from leafseg.config import load_config
    from leafseg.recipes.fuss.config import FussConfig, check_config

    cfg = load_config(FussConfig, None, tiny_values(world, out, **sections))
    check_config(cfg)
    return cfg
