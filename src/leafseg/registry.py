"""The recipes by name: one table read by ``leafseg train``, ``leafseg config``, ``leafseg eval model``,
``leafseg segment`` and :func:`leafseg.eval.methods.load_model`. Nothing is imported until asked for, so
reading the table costs nothing and registers nothing.

Each recipe module provides ``CONFIG`` (its config dataclass), ``check_config(cfg)``,
``run(config_path, overrides, resume=False, overwrite=False)`` and ``load_segmenter(exported, device)``,
which rebuilds a harness method from exported weights (:func:`leafseg.training.read_exported`: a dict with
``recipe``, ``config``, ``model`` and ``extra``).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from leafseg.config import suggest
from leafseg.errors import ConfigError

RECIPES: dict[str, tuple[str, str]] = {  # name -> (module, one line for --help)
    "unimatch_v2": ("leafseg.recipes.unimatch_v2", "semi-supervised: UniMatch V2 (also FixMatch, labelled-only)"),
    "sseg": ("leafseg.recipes.sseg", "open vocabulary from image-caption pairs: S-Seg"),
    "sseg_plus": ("leafseg.recipes.sseg_plus", "self-training on a target dataset with a trained S-Seg: S-Seg+"),
    "grouping_clip": ("leafseg.recipes.grouping_clip",
                      "open vocabulary from image-caption pairs: self-supervised grouping + CLIP region tokens"),
    "clip": ("leafseg.recipes.clip_pretrain", "contrastive image-text pretraining of a CLIP from scratch"),
    "stego": ("leafseg.recipes.stego", "label-free: STEGO, a head on a frozen encoder distilling its feature "
                                      "correspondences, cluster probe"),
    "dino": ("leafseg.recipes.dino", "label-free pretraining of a ViT by self-distillation (DINO), exported as "
                                    "a frozen encoder's weights folder"),
    "fuss": ("leafseg.recipes.fuss", "federated label-free segmentation on Flower: FUSS (STEGO-style clients)"),
}


def recipe_names() -> list[str]:
    return list(RECIPES)


def recipe_module(name: str) -> ModuleType:
    """The module of recipe ``name`` (imported now)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}{suggest(name, RECIPES)}; recipes: {', '.join(RECIPES)}")
    return importlib.import_module(RECIPES[name][0])


def load_config_of(name: str, path: str | os.PathLike | None = None, overrides: list[str] | None = None):
    """Recipe ``name``'s resolved and checked config from a file (optional) and overrides."""
    from leafseg.config import load_config

    module = recipe_module(name)
    cfg = load_config(module.CONFIG, path, overrides)
    module.check_config(cfg)
    return cfg


def load_exported_segmenter(path: str | os.PathLike, device: str = "cpu"):
    """A harness method from weights a recipe exported (the recipe named in the file rebuilds it)."""
    from leafseg.training.checkpoint import read_exported

    return segmenter_from_exported(read_exported(path), path, device)


def segmenter_from_exported(exported: dict, path: str | os.PathLike, device: str = "cpu"):
    """A harness method from exported weights already read (:func:`leafseg.training.read_exported`), rebuilt
    by the recipe they name; ``path`` names the file in errors."""
    if exported["recipe"] not in RECIPES:
        raise ConfigError(f"{path}: weights of recipe {exported['recipe']!r}, which this leafseg does not know "
                          f"(known: {', '.join(RECIPES)})")
    return recipe_module(exported["recipe"]).load_segmenter(exported, device)
