"""The smallest S-Seg / S-Seg+ runs the tests train: a 16-scene synthetic world at 32 px (8 validation
scenes), RGB k-means pseudo-masks, a 2-block width-32 ViT, a 1-layer text transformer."""

from pathlib import Path

TINY = [
    "data_layout=folder", "image_size=32", "random_crop=false", "shuffle_buffer=8", "num_workers=0",
    "pseudo_masks={backbone: pixels4, k: 4, cache: true}", "backbone=dino_vits8", "weights=random",
    "arch_overrides={patch_size: 8, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, "
    "intermediate_size: 64}",
    "memory_level=1", "num_queries=8", "hidden_dim=32", "dec_layers=2", "dec_heads=4", "ffn_dim=64", "mask_dim=16",
    "conv_dim=16", "embed_dim=16", "vocab_size=300", "text_width=32", "text_layers=1", "text_heads=2",
    "context_length=32",
    "batch_size=4", "lr=0.003", "warmup=2", "eval.dataset=synthetic", "eval.split=val",
    "eval.protocol={batch_size: 8, workers: 0}",
    "log_every=1", "save_every=3", "progress=false", "seed=0",
]
PLUS = [
    "label_size=32", "backbone=dino_vits8", "weights=random",
    "arch_overrides={patch_size: 8, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, "
    "intermediate_size: 64}", "crop_size=32", "batch_size=4", "lr=0.001", "num_workers=0",
    "eval.protocol={batch_size: 8, workers: 0}", "progress=false", "log_every=1",
]


def write_world(root: Path) -> Path:
    """The tiny world (16 train + 8 val scenes of 32 px) at ``root``."""
    from leafseg.data.synthetic import SyntheticWorld

    world = SyntheticWorld(seed=0, size=32)
    world.write(root, 16, "train")
    return world.write(root, 8, "val")


def sseg_args(world: Path, out: Path, *extra: str) -> list[str]:
    return TINY + [f"data={world}", f"eval.root={world}", f"out_dir={out}", *extra]


def plus_args(world: Path, checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return PLUS + [f"sseg_checkpoint={checkpoint}", f"target_images={world}/images/train", f"eval.root={world}",
                   f"out_dir={out}", *extra]
