"""The smallest DINO runs the tests train: the 32-pixel synthetic world of ``sseg_tiny``, a random 2-block
width-32 DINO ViT with 8-pixel patches, a 16-prototype head, 2 global views of 32 px and 2 local of 16 px."""

from pathlib import Path

ENCODER = ("backbone={name: dino_vits8, weights: random, seed: 0, arch_overrides: {patch_size: 8, hidden_size: 32, "
           "num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64}}")
TINY = [
    "dataset=synthetic", "image_size=32", "num_workers=0", ENCODER,
    "head={out_dim: 16, hidden_dim: 32, bottleneck_dim: 8}",
    "crops={global_size: 32, local_size: 16, local_crops: 2, blur_sigma: [0.1, 0.5]}",
    "distill={warmup_teacher_temp: 0.04, teacher_temp: 0.06, warmup_teacher_iterations: 4, freeze_prototypes: 2}",
    "probe={clusters: 4}", "batch_size=4", "warmup=2", "lr=0.001",
    "eval.protocol={center_crop: 32, batch_size: 8, workers: 0}",
    "log_every=1", "save_every=3", "progress=false", "echo=false", "seed=0",
]


def dino_args(world: Path, out: Path, *extra: str) -> list[str]:
    return TINY + [f"data_root={world}", f"out_dir={out}", *extra]
