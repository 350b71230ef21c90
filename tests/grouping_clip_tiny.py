"""The smallest grouping_clip runs the tests train: the 32-pixel synthetic world of ``sseg_tiny``, a random
CLIP with 8-pixel patches (4 x 4 tokens, width 128, 2 blocks, with its tokenizer), 4 regions of RGB k-means."""

from pathlib import Path

TINY = [
    "data_layout=folder", "image_size=32", "random_crop=false", "shuffle_buffer=8", "num_workers=0",
    "grouping={backbone: pixels4, num_regions: 4}", "loss={templates: single}",
    "batch_size=4", "lr=0.01", "eval.dataset=synthetic", "eval.split=val",
    "eval.protocol={short_side: null, mode: whole, batch_size: 8, workers: 0}",
    "log_every=1", "save_every=3", "progress=false", "echo=false", "seed=0",
]


def write_tiny_clip(folder: Path) -> Path:
    """A random CLIP ViT with 8-pixel patches and its tokenizer in ``folder``."""
    from leafseg.backbones import make_random_checkpoint

    return make_random_checkpoint("clip_vitb16", folder, vision_config={"patch_size": 8, "image_size": 32})


def gclip_args(world: Path, clip: Path, out: Path, *extra: str) -> list[str]:
    return TINY + [f"data={world}", f"clip.weights={clip}", f"eval.root={world}", f"out_dir={out}", *extra]
