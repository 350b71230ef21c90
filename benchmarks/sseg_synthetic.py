"""S-Seg's central claim on the synthetic world: open-vocabulary segmentation learned from image-caption
pairs alone (the masks on disk are never read for training), evaluated by class name on held-out scenes.

Per seed (the world is the same for every seed; the seed sets the models and the data order):

* S-Seg (configs/sseg/synthetic.yaml): MaskFormer + pseudo-masks + matching + contrastive loss, text
  transformer from scratch on a BPE of the captions, with the config's documented deviations for a
  small from-scratch model (mask pooling, mean of the projected mask features; docs/sseg.md).
  mIoU by class name.
* S-Seg+ (configs/sseg/synthetic_plus.yaml): the S-Seg pseudo-labels the training images by class name,
  a ViT + DPT model (its ViT starting from the S-Seg one, its head fresh) trains on them.
* B2, the paper's "pseudo-mask ViT" baseline (Table 3): the same ViT, its tokens average-pooled inside
  each pseudo-mask segment, the segment features averaged into the image embedding, trained CLIP-style
  with the same text encoder, data and steps; at test every pseudo-mask segment takes the class of its
  own feature.
* S-Seg with the pretrained MiniLM text encoder (frozen): mIoU by class name, and by held-out synonyms
  that no caption contains (leafseg.data EVAL_SYNONYMS, e.g. "heavens" for sky); the scratch text
  encoder is scored on the same synonyms for contrast.

    python benchmarks/sseg_synthetic.py [--seeds 0 1 2] [--out runs/bench_sseg] [--threads 1]
    (about 11 minutes a seed on one CPU thread)
    python benchmarks/sseg_synthetic.py --quick        # a one-minute end-to-end check, figures meaningless
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from leafseg.data import EVAL_SYNONYMS
from leafseg.data.datasets import build_dataset
from leafseg.data.imagetext import collate_image_text
from leafseg.eval.harness import evaluate
from leafseg.eval.methods import Segmenter
from leafseg.eval.prompts import text_embeddings
from leafseg.eval.protocol import Protocol
from leafseg.heads.maskformer import MLP
from leafseg.losses.contrastive import ContrastiveLoss
from leafseg.recipes import sseg, sseg_plus

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "sseg"
QUICK = ["iterations=30", "eval_batch_size=32", "synthetic={train: 96, val: 24, size: 64, seed: 0}"]


class PseudoMaskViT(nn.Module):
    """B2: a ViT whose image embedding is the mean of per-segment token averages.

    segment_features(images (B, 3, H, W), regions (B, H, W) ids < k) -> (B, k, C) and valid (B, k);
    forward(images, regions, captions) -> (image embeddings (B, E), text embeddings (B, E), scale).
    """

    def __init__(self, encoder: nn.Module, text: nn.Module, k: int, embed_dim: int):
        super().__init__()
        self.encoder, self.text, self.k = encoder, text, k
        self.image_proj = MLP(encoder.embed_dim, encoder.embed_dim, embed_dim, 2)
        self.text_proj = MLP(text.out_dim, text.out_dim, embed_dim, 2)
        self.contrastive = ContrastiveLoss()

    def segment_features(self, images, regions):
        tokens = self.encoder.features(images).maps[0]  # (B, C, h, w)
        size = (images.shape[-2] // 4, images.shape[-1] // 4)
        tokens = F.interpolate(tokens, size=size, mode="bilinear", align_corners=False).flatten(2)  # (B, C, P)
        r = F.interpolate(regions[:, None].float(), size=size, mode="nearest")[:, 0].long().flatten(1)
        onehot = F.one_hot(r.clamp(0, self.k - 1), self.k).float()  # (B, P, k)
        area = onehot.sum(1)  # (B, k)
        feats = torch.bmm(tokens, onehot).transpose(1, 2) / area.clamp_min(1)[..., None]  # (B, k, C)
        return feats, area > 0

    def forward(self, images, regions, captions):
        feats, valid = self.segment_features(images, regions)
        pooled = (feats * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp_min(1)
        return self.image_proj(pooled), self.text_proj(self.text(captions)), self.contrastive.scale

    def encode_text(self, texts):
        return F.normalize(self.text_proj(self.text(list(texts))), dim=-1)


class B2Segmenter(Segmenter):
    """Every pseudo-mask segment of the test image takes its feature's class: logits (B, C, H, W)."""

    def __init__(self, model: PseudoMaskViT, generator):
        super().__init__()
        self.model, self.generator, self.text = model, generator, None

    def prepare(self, class_names, protocol) -> None:
        emb = text_embeddings(self.model.encode_text, class_names, protocol.templates)
        self.text, self.query_classes = emb.embeddings, emb.query_classes

    def forward(self, images):
        regions = self.generator(images)
        feats, _ = self.model.segment_features(images, regions)
        logits = self.model.contrastive.scale * F.normalize(self.model.image_proj(feats), dim=-1) @ self.text.t()
        per_pixel = logits.gather(1, regions.flatten(1)[..., None].expand(-1, -1, logits.shape[2]))  # (B, HW, Q)
        return per_pixel.transpose(1, 2).reshape(images.shape[0], -1, *images.shape[-2:])


def train_b2(cfg, out: Path, device) -> B2Segmenter:
    """B2 with S-Seg's data, cached pseudo-masks, tokenizer, text encoder size, optimiser and steps."""
    from leafseg.backbones import build_backbone
    from leafseg.text import build_text_encoder, build_tokenizer

    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer("bpe", path=out / "tokenizer.json", context_length=cfg.context_length)
    encoder = build_backbone(cfg.backbone, weights=cfg.weights, arch_overrides=cfg.arch_overrides or None)
    text = build_text_encoder("scratch", tokenizer=tokenizer, width=cfg.text_width, layers=cfg.text_layers,
                              heads=cfg.text_heads, context_length=cfg.context_length)
    model = PseudoMaskViT(encoder, text, cfg.pm_k, cfg.embed_dim).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    source = sseg.image_text_source(cfg, regions_dir=out / "pseudo_masks")
    step, epoch = 0, 0
    while step < cfg.iterations:
        source.set_epoch(epoch)
        for batch in DataLoader(source, batch_size=cfg.batch_size, drop_last=True, collate_fn=collate_image_text):
            for group in optimizer.param_groups:
                group["lr"] = sseg.learning_rate(cfg, step)
            flip = torch.rand(len(batch["image"])) < 0.5
            images = torch.where(flip[:, None, None, None], batch["image"].flip(-1), batch["image"]).to(device)
            regions = torch.where(flip[:, None, None], batch["regions"].flip(-1), batch["regions"]).to(device)
            img, txt, scale = model(images, regions, batch["caption"])
            from leafseg.losses.contrastive import contrastive_loss

            loss = contrastive_loss(img, txt, scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step >= cfg.iterations:
                break
        epoch += 1
    return B2Segmenter(model.eval(), sseg.build_pseudo_mask_generator(cfg, device))


def synonym_entries(classes) -> list[str]:
    """Held-out names of every class ("ocean, pond" for water): never in a training caption."""
    return [", ".join(EVAL_SYNONYMS[c]) for c in classes]


def run_seed(seed: int, args, device) -> dict:
    """Every figure of one seed (mIoU in percent) and the seconds each part took."""
    base = [f"seed={seed}", f"data={args.world}", f"eval_root={args.world}", "progress=false"] + args.extra
    out = Path(args.out) / f"seed{seed}"
    row, times = {}, {}
    t = time.perf_counter()
    res = sseg.run(CONFIGS / "synthetic.yaml", base + [f"out_dir={out / 'sseg'}"])
    model, cfg = sseg.load_sseg(res["checkpoint"], str(device))
    val = build_dataset("synthetic", args.world, split="val")
    row["sseg"] = 100 * res["miou"]
    row["sseg_scratch_synonyms"] = 100 * sseg.evaluate_sseg(model, cfg, device, synonym_entries(val.classes),
                                                            dataset=val).miou
    times["sseg"] = time.perf_counter() - t
    t = time.perf_counter()
    plus = sseg_plus.run(CONFIGS / "synthetic_plus.yaml", [
        f"seed={seed}", f"sseg_checkpoint={res['checkpoint']}", f"target_images={args.world}/images/train",
        f"eval_root={args.world}", f"out_dir={out / 'sseg_plus'}", "progress=false", "eval_teacher=false"]
        + args.plus_extra)
    row["sseg_plus"] = 100 * plus["miou"]
    times["sseg_plus"] = time.perf_counter() - t
    t = time.perf_counter()
    b2 = train_b2(cfg, out / "sseg", device)
    report = evaluate(b2, val, Protocol(name="b2", workers=0, batch_size=cfg.eval_batch_size), progress=False,
                      device=device)
    row["b2"] = 100 * report.miou
    times["b2"] = time.perf_counter() - t
    t = time.perf_counter()
    res = sseg.run(CONFIGS / "synthetic.yaml", base + [f"out_dir={out / 'sseg_minilm'}", "text_encoder=minilm"])
    model, cfg = sseg.load_sseg(res["checkpoint"], str(device))
    row["minilm_names"] = 100 * res["miou"]
    row["minilm_synonyms"] = 100 * sseg.evaluate_sseg(model, cfg, device, synonym_entries(val.classes),
                                                      dataset=val).miou
    times["minilm"] = time.perf_counter() - t
    print(f"seed {seed}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items())
          + " | seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/bench_sseg")
    ap.add_argument("--world", default=None, help="synthetic world folder (default: OUT/world)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="tiny world and 30 steps: checks the pipeline only")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.world = args.world or str(Path(args.out) / "world")
    args.extra = QUICK if args.quick else []
    args.plus_extra = ["iterations=20"] if args.quick else []
    if args.quick:
        args.seeds = args.seeds[:1]
    device = torch.device(args.device)
    start = time.perf_counter()
    rows = [run_seed(seed, args, device) for seed in args.seeds]
    minutes = (time.perf_counter() - start) / 60

    def stat(key: str) -> str:
        values = [r[key] for r in rows]
        spread = f"±{statistics.stdev(values):.1f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.1f}{spread}"

    label = device.type if device.type == "cpu" else torch.cuda.get_device_name(device)
    label += f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"sseg_synthetic [{label}, {len(rows)} seeds, {minutes:.1f} min{', QUICK' if args.quick else ''}]: "
          f"mIoU by class name: S-Seg {stat('sseg')}, S-Seg+ {stat('sseg_plus')}, B2 pseudo-mask ViT {stat('b2')}; "
          f"MiniLM text: names {stat('minilm_names')}, unseen synonyms {stat('minilm_synonyms')} "
          f"(scratch text on unseen synonyms {stat('sseg_scratch_synonyms')})")


if __name__ == "__main__":
    main()
