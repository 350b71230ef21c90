"""The smallest STEGO runs the tests train: the 32-pixel synthetic world of ``sseg_tiny``, a random 2-block
width-32 DINO ViT with 8-pixel patches (4 x 4 features), an 8-d head, 4 clusters, 3 x 3 sampled points."""

from pathlib import Path

ENCODER = ("backbone={name: dino_vits8, weights: random, seed: 0, arch_overrides: {patch_size: 8, hidden_size: 32, "
           "num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64}}")
TINY = [
    "dataset=synthetic", "image_size=32", "five_crop=false", "num_workers=0", ENCODER,
    "head={code_dim: 8}", "loss={feature_samples: 3, negatives: 2}", "knn={k: 2}", "probes={clusters: 4}",
    "batch_size=4", "lr=0.005", "eval.protocol={center_crop: 32, batch_size: 8, workers: 0}",
    "log_every=1", "save_every=3", "progress=false", "echo=false", "seed=0",
]


def stego_args(world: Path, out: Path, *extra: str) -> list[str]:
    return TINY + [f"data_root={world}", f"out_dir={out}", *extra]
