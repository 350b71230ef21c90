"""The smallest CLIP pretraining runs the tests train: on the 32 px world of :mod:`sseg_tiny` (16 training,
8 validation scenes), a 1-block width-32 ViT of 8 px patches and a 1-layer width-32 text transformer."""

from pathlib import Path

TINY = [
    "data={layout: folder, shuffle_buffer: 8, num_workers: 0}", "augment={scale: [0.5, 1.0]}",
    "vision={image_size: 32, patch_size: 8, width: 32, layers: 2, heads: 2}",
    "text={width: 32, layers: 1, heads: 2, context_length: 32, vocab_size: 300}", "embed_dim=16",
    "batch_size=4", "lr=0.003", "warmup=2", "retrieval={limit: 8, batch_size: 8}",
    "eval={dataset: synthetic, split: val, protocol: {batch_size: 8, workers: 0}}",
    "log_every=1", "save_every=3", "progress=false", "seed=0",
]


def clip_args(world: Path, out: Path, *extra: str) -> list[str]:
    return TINY + [f"data.path={world}", f"eval.root={world}", f"out_dir={out}", *extra]
