"""The tiny models the tests of `leafseg serve` offer on the page: a random CLIP folder (config, weights and
tokenizer) for MaskCLIP, and the exported weights of short UniMatch V2 (fixed classes) and S-Seg (open
vocabulary) runs on the synthetic world."""

from pathlib import Path


def clip_folder(root: Path) -> Path:
    """A tiny random CLIP with its tokenizer, loadable with ``--backbone clip_vitb16 --weights <folder>``."""
    from leafseg.backbones import make_random_checkpoint

    return make_random_checkpoint("clip_vitb16", root / "clip")


def unimatch_weights(root: Path) -> Path:
    """Exported weights of a one-epoch UniMatch V2 run (the 12 synthetic classes)."""
    from leafseg.registry import recipe_module
    from unimatch_tiny import write_tiny_config

    config = write_tiny_config(root / "unimatch.yaml", root / "unimatch_world", epochs=1)
    recipe_module("unimatch_v2").run(str(config), [f"out_dir={root / 'unimatch'}"])
    return root / "unimatch" / "final_ema.safetensors"


def sseg_weights(root: Path) -> Path:
    """Exported weights of a two-iteration S-Seg run."""
    from leafseg.registry import recipe_module
    from sseg_tiny import sseg_args, write_world

    world = write_world(root / "sseg_world")
    return Path(recipe_module("sseg").run(None, sseg_args(world, root / "sseg", "iterations=2"))["checkpoint"])
