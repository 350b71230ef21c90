"""`leafseg demo`: the synthetic world, pseudo-masks from two encoders, their oracle mIoU, a short
semi-supervised run (UniMatch V2 against labelled-only training), and one HTML report.

The pseudo-mask part runs on a CPU in well under a minute. Without downloadable weights the ViT
encoder has random weights (pass ``--weights`` with a local checkpoint to see a pretrained one); the
pixel K-means row is the baseline of S-Seg's Table 1. The semi-supervised part trains a tiny DINOv2 +
DPT from scratch with 1/16 of the scenes labelled (``semi_epochs`` epochs of 240 iterations for each
method; 0 skips it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from leafseg.data.io import list_images, palette, read_image, read_mask
from leafseg.data.synthetic import SyntheticWorld
from leafseg.errors import ConfigError
from leafseg.eval import report
from leafseg.eval.matching import oracle_labels
from leafseg.eval.pseudo_mask_folder import pseudo_mask_folder
from leafseg.grouping import PseudoMaskGenerator, build_feature_extractor
from leafseg.training.runinfo import run_record, write_json


def _encoders(backbone: str, weights: str | None):
    """(label, registry name, weights) of the encoders the demo compares."""
    label = f"{backbone} ({'random weights' if weights == 'random' else weights or 'default weights'})"
    return [("pixel K-means (RGB, 1/8 res.)", "pixels8", None), (f"{label} + K-means", backbone, weights)]


def _gallery_rows(world_dir: Path, out_dirs: list[Path], names: list[str], num_classes: int, k: int):
    """Tiles per scene: image, ground truth, then each encoder's regions and their oracle labelling."""
    class_colours, region_colours = palette(num_classes), palette(k + 8)[8:]
    rows = []
    for name in names:
        image = read_image(world_dir / "images" / "train" / f"{name}.png")
        gt = read_mask(world_dir / "masks" / "train" / f"{name}.png")
        row = [image, report.overlay(image, gt, class_colours)]
        for out in out_dirs:
            regions = read_mask(out / f"{name}.png")
            oracle = oracle_labels(torch.from_numpy(regions.astype(np.int64))[None],
                                   torch.from_numpy(gt.astype(np.int64))[None], num_classes)[0].numpy()
            row += [report.overlay(image, regions, region_colours), report.overlay(image, oracle, class_colours)]
        rows.append(row)
    return rows


def run_demo(out: str | Path = "demo_out", *, scenes: int = 48, size: int = 96, k: int = 8,
             backbone: str = "dino_vits8", weights: str | None = "random", seed: int = 0,
             device: str = "cpu", progress: bool = True, semi_epochs: int = 10,
             semi_overrides: list[str] | None = None) -> dict:
    """Generate a world, run the pseudo-mask generators and (``semi_epochs`` > 0) the short
    semi-supervised comparison, write ``report.html``; returns the figures."""
    if semi_epochs < 0:
        raise ConfigError(f"semi_epochs must be >= 0, got {semi_epochs}")
    out = Path(out)
    for owned in (out / "world", out / "pseudo_masks"):  # the demo's own folders: start them afresh
        shutil.rmtree(owned, ignore_errors=True)
    torch.manual_seed(seed)
    world = SyntheticWorld(seed=seed, size=size)
    world_dir = world.write(out / "world", scenes, split="train")
    config = dict(scenes=scenes, size=size, k=k, backbone=backbone, weights=weights, seed=seed, device=device)
    rows, out_dirs = [], []
    for label, name, w in _encoders(backbone, weights):
        encoder = build_feature_extractor(name, weights=w, device=device).eval()
        generator = PseudoMaskGenerator(encoder, k=k, seed=seed)
        out_dir = out / "pseudo_masks" / name
        res = pseudo_mask_folder(generator, world_dir / "images" / "train", out_dir,
                                 gt_dir=world_dir / "masks" / "train", num_classes=world.num_classes,
                                 device=device, num_workers=0, progress=progress)
        rows.append({"method": label, "oracle mIoU": 100 * res.oracle["miou"],
                     "pixel acc.": 100 * res.oracle["acc"], "images/s": res.images_per_second,
                     "iou": res.oracle["iou"]})
        out_dirs.append(out_dir)
    names = [p.stem for p in list_images(world_dir / "images" / "train")[:6]]
    titles = ["image", "ground truth"]
    for label, _, _ in _encoders(backbone, weights):
        short = label.split(" (")[0]
        titles += [f"{short}: regions", f"{short}: oracle"]
    gallery = report.gallery(_gallery_rows(world_dir, out_dirs, names, world.num_classes, k), titles,
                             out / "gallery.png")
    semi = None
    if semi_epochs:
        from leafseg.recipes import unimatch_v2

        semi = unimatch_v2.demo(out / "semi_supervised", epochs=semi_epochs, seed=seed, device=device,
                                progress=progress, overrides=semi_overrides)["rows"]
    config.update(semi_epochs=semi_epochs, semi_overrides=list(semi_overrides or []))
    record = run_record(seed=seed, config=config, device=device)
    record["metrics"] = [{key: v for key, v in r.items()} for r in rows]
    record["semi_supervised"] = semi
    write_json(out / "run.json", record)
    _write_report(out, world, rows, gallery, record, semi)
    return {"rows": rows, "semi_supervised": semi, "report": out / "report.html", "gallery": gallery}


def _semi_section(rows: list[dict], epochs: int) -> str:
    intro = (
        f"<p>A tiny DINOv2 + DPT trained from scratch for {epochs} epochs ({rows[0]['iterations']} iterations) "
        "with 1/16 of 1,024 synthetic scenes labelled, scored on 64 held-out scenes. <b>Labelled-only</b> "
        "sees the 64 labelled scenes; <b>UniMatch V2</b> adds the other 960 through an EMA teacher's "
        "confident pseudo-labels on two strongly augmented views with Complementary Dropout. The teacher "
        "of so small a model becomes confident only after about 1,000 iterations, so runs much shorter than "
        "the default 10 epochs show labelled-only ahead; <code>benchmarks/unimatch_synthetic.py</code> runs the "
        "full comparison (15 epochs, four methods, three seeds).</p>")
    return intro + report.metrics_table(rows, ["method", "best EMA mIoU", "final EMA mIoU", "iterations",
                                               "seconds"])


def _write_report(out: Path, world, rows, gallery: Path, record: dict, semi: list[dict] | None = None) -> Path:
    best = max(rows, key=lambda r: r["oracle mIoU"])
    per_class = {n: 100 * v for n, v in zip(world.classes, best["iou"], strict=True)}
    intro = (
        f"<p>{record['config']['scenes']} synthetic scenes ({world.num_classes} classes, exact masks). "
        f"Each encoder's patch features are clustered into K = {record['config']['k']} regions per image "
        "with batched k-means (S-Seg's pseudo-mask generator). <b>Oracle mIoU</b> gives every region its "
        "majority ground-truth class: it measures how well the regions follow object boundaries, the "
        "measure of S-Seg Table 1.</p><p class='note'>Without downloadable checkpoints the ViT has random "
        "weights; pass <code>--weights PATH</code> (a Hugging Face folder or the authors' .pth) to see a "
        "pretrained encoder.</p>"
    )
    sections = [
        ("What you are looking at", intro),
        ("Pseudo-mask quality", report.metrics_table(rows, ["method", "oracle mIoU", "pixel acc.", "images/s"])),
        (f"Per-class IoU, {best['method']}", report.bars_html(per_class)),
        ("Classes", report.legend_html(world.classes, palette(world.num_classes))),
        ("Gallery", f'<img src="{gallery.name}" alt="gallery">'),
        *([("Semi-supervised: UniMatch V2 vs labelled-only", _semi_section(semi, record["config"]["semi_epochs"]))]
          if semi else []),
        ("Run", f"<pre>{record['git_commit']}  torch {record['environment']['torch']}  "
                f"{record['environment']['device']}  seed {record['seed']}</pre>"),
    ]
    return report.write_html(out / "report.html", "leafseg demo: pseudo-masks on the synthetic world", sections)
