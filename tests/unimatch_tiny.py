"""The smallest UniMatch V2 run the tests train: a 40-scene synthetic world at 32 px, 8 of them
labelled, a 2-block width-32 DINOv2 with 8 px patches, 2 epochs."""

from pathlib import Path

import yaml

TINY = {
    "dataset": "synthetic",
    "synthetic": {"train": 40, "val": 8, "size": 32, "seed": 0},
    "num_labeled": 8,
    "backbone": "dinov2_vits14",
    "weights": "random",
    "arch_overrides": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8,
                       "image_size": 32},
    "layers": [0, 0, 1, 1],
    "crop_size": 32,
    "batch_size": 4,
    "epochs": 2,
    "lr": 0.001,
    "lr_head_multiplier": 1.0,
    "num_workers": 0,
    "eval": {"protocol": {"size_multiple": 8, "batch_size": 8, "workers": 0, "window_merge": "probabilities"}},
    "log_every": 1,
    "progress": False,
}


def write_tiny_config(path: Path, world: Path, **changes) -> Path:
    """Write the tiny config (with ``changes``) to ``path``, its world to be written at ``world``."""
    path.write_text(yaml.safe_dump({**TINY, "data_root": str(world), **changes}, sort_keys=False))
    return path
