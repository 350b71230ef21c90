"""S-Seg's central claim on the synthetic world: open-vocabulary segmentation learned from image-caption
pairs alone (the masks on disk are never read for training), evaluated by class name on held-out scenes.

Per seed (the world is the same for every seed; the seed sets the models and the data order). Verdict
protocol (docs/benchmarks.md): by default the held-out world (world seed 1, its own training and
validation scenes) with model seeds 100-102, which no choice saw; ``--world dev`` runs the development
world (seed 0) and seeds 0-2 on which the config's departures were chosen, and prints no verdict, nor
does a run with fewer than 3 seeds.

* S-Seg (configs/sseg/synthetic.yaml): MaskFormer + pseudo-masks + matching + contrastive loss, text
  transformer from scratch on a BPE of the captions, with the config's documented deviations for a
  small from-scratch model (convolutional stem, mask pooling, mean of the projected mask features;
  docs/sseg.md). mIoU by class name.
* S-Seg+ (configs/sseg/synthetic_plus.yaml): the S-Seg pseudo-labels the training images by class name,
  a ViT + DPT model (its ViT and stem starting from the S-Seg ones, its head fresh) trains on them.
* B2, the paper's "pseudo-mask ViT" baseline (Table 3): the same backbone features (the ViT's last block
  and, when the config has one, the same stem), average-pooled inside each pseudo-mask segment, the
  segment features averaged into the image embedding, trained CLIP-style with the same text encoder,
  data and steps; at test every pseudo-mask segment takes the class of its own feature.
* S-Seg and B2 with the pretrained MiniLM text encoder (frozen): mIoU by class name, and for S-Seg by
  held-out synonyms that no caption contains (leafseg.data EVAL_SYNONYMS, e.g. "heavens" for sky); the
  scratch text encoder is scored on the same synonyms for contrast.

The claims: S-Seg beats B2 by more than the two seed standard deviations added; S-Seg+ beats S-Seg by
more than the standard deviation of its per-seed gains (each S-Seg+ run is trained from its own seed's
S-Seg, so the comparison is paired). The runs go in parallel, one single-threaded process per core.

    python benchmarks/sseg_synthetic.py [--world heldout|dev] [--out runs/bench_sseg] [--workers 2]
    (about 36 minutes on two CPU cores; the two MiniLM runs of a seed use batches of --minilm-batch 32)
    python benchmarks/sseg_synthetic.py --quick        # a one-minute end-to-end check, figures meaningless
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from verdict import add_arguments, describe, die_with_parent, resolve, verdict

from leafseg.data import EVAL_SYNONYMS
from leafseg.data.datasets import build_dataset
from leafseg.data.imagetext import collate_image_text
from leafseg.eval.harness import evaluate
from leafseg.eval.methods import Segmenter
from leafseg.eval.prompts import get_templates, text_embeddings
from leafseg.eval.protocol import Protocol
from leafseg.heads.maskformer import MLP, ViTPyramid
from leafseg.losses.contrastive import ContrastiveLoss, contrastive_loss, multi_label_loss
from leafseg.recipes import sseg, sseg_plus
from leafseg.text.nouns import noun_batch
from leafseg.training import warmup_cosine_schedule

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "sseg"
QUICK = ["iterations=30", "eval.protocol.batch_size=32", "synthetic={train: 96, val: 24, size: 64, seed: 0}"]


class PseudoMaskViT(nn.Module):
    """B2: a ViT whose image embedding is the mean of per-segment token averages.

    segment_features(images (B, 3, H, W), regions (B, H, W) ids < k) -> (B, k, C) and valid (B, k);
    forward(images, regions, captions) -> (image embeddings (B, E), text embeddings (B, E), scale).
    """

    def __init__(self, encoder: nn.Module, text: nn.Module, k: int, embed_dim: int, stem_channels: int = 0,
                 channels: int = 64, init_temperature: float = 0.07):
        super().__init__()
        self.encoder, self.text, self.k = encoder, text, k
        self.pyramid = None
        dim = encoder.embed_dim
        if stem_channels:  # the S-Seg model's stride-4 level: last block upsampled + the same convolutional stem
            self.pyramid = ViTPyramid(encoder, layers=[encoder.num_blocks - 1], strides=[4], channels=channels,
                                      stem_channels=stem_channels)
            dim = channels
        self.image_proj = MLP(dim, dim, embed_dim, 2)
        self.text_proj = MLP(text.out_dim, text.out_dim, embed_dim, 2)
        self.contrastive = ContrastiveLoss(init_temperature)

    def segment_features(self, images, regions):
        if self.pyramid is not None:
            tokens = self.pyramid(images)[0]  # (B, C, H/4, W/4)
        else:
            tokens = self.encoder.features(images).maps[0]  # (B, C, h, w)
        size = (images.shape[-2] // 4, images.shape[-1] // 4)
        tokens = F.interpolate(tokens, size=size, mode="bilinear", align_corners=False).flatten(2)  # (B, C, P)
        r = F.interpolate(regions[:, None].float(), size=size, mode="nearest")[:, 0].long().flatten(1)
        onehot = F.one_hot(r.clamp(0, self.k - 1), self.k).float()  # (B, P, k)
        area = onehot.sum(1)  # (B, k)
        feats = torch.bmm(tokens, onehot).transpose(1, 2) / area.clamp_min(1)[..., None]  # (B, k, C)
        return feats, area > 0

    def forward(self, images, regions, captions, nouns=()):
        feats, valid = self.segment_features(images, regions)
        pooled = (feats * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp_min(1)
        text = self.text_proj(self.text(list(captions) + list(nouns)))
        return self.image_proj(pooled), text[: len(captions)], text[len(captions):], self.contrastive.scale

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
    """B2 with S-Seg's data, cached pseudo-masks, tokenizer, noun vocabulary, text encoder size, losses,
    temperature, optimiser (parameter groups and schedule) and steps."""
    from leafseg.backbones import build_backbone
    from leafseg.text import build_text_encoder, build_tokenizer

    torch.manual_seed(cfg.seed)
    encoder = build_backbone(cfg.backbone, weights=cfg.weights, arch_overrides=cfg.arch_overrides or None)
    if cfg.text_encoder == "minilm":
        text = build_text_encoder("minilm", minilm_weights=cfg.minilm_weights, frozen=cfg.text_frozen)
    else:
        tokenizer = build_tokenizer("bpe", path=out / "tokenizer.json", context_length=cfg.context_length)
        text = build_text_encoder("scratch", tokenizer=tokenizer, width=cfg.text_width, layers=cfg.text_layers,
                                  heads=cfg.text_heads, context_length=cfg.context_length)
    model = PseudoMaskViT(encoder, text, cfg.pseudo_masks.k, cfg.embed_dim, stem_channels=cfg.stem_channels,
                          channels=cfg.conv_dim, init_temperature=cfg.init_temperature).to(device).train()
    optimizer = torch.optim.AdamW(sseg.param_groups(model, cfg), lr=cfg.lr)
    scheduler = warmup_cosine_schedule(optimizer, cfg.iterations, cfg.warmup, cfg.min_lr_ratio)
    source = sseg.image_text_source(cfg, regions_dir=out / "pseudo_masks")
    vocab = set((out / "nouns.txt").read_text().split()) if cfg.noun_prompts else None
    templates = get_templates(cfg.noun_templates)
    step, epoch = 0, 0
    while step < cfg.iterations:
        source.set_epoch(epoch)
        for batch in DataLoader(source, batch_size=cfg.batch_size, drop_last=True, collate_fn=collate_image_text):
            flip = torch.rand(len(batch["image"])) < 0.5
            images = torch.where(flip[:, None, None, None], batch["image"].flip(-1), batch["image"]).to(device)
            regions = torch.where(flip[:, None, None], batch["regions"].flip(-1), batch["regions"]).to(device)
            nouns, targets = [], None
            if cfg.noun_prompts:
                nouns, targets = noun_batch(batch["caption"], vocab, cfg.noun_prompts, templates)
            img, txt, noun, scale = model(images, regions, batch["caption"], nouns)
            loss = contrastive_loss(img, txt, scale)
            if targets is not None:
                loss = loss + cfg.lambda_noun * multi_label_loss(img, noun, targets.to(device), scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            if step >= cfg.iterations:
                break
        epoch += 1
    return B2Segmenter(model.eval(), sseg.build_pseudo_mask_generator(cfg, device))


def b2_protocol(cfg) -> Protocol:
    """B2 scored whole-image like S-Seg, at S-Seg's evaluation batch size (B2's scores are softmaxed)."""
    return Protocol(name="b2", workers=0, batch_size=cfg.eval.resolve("synthetic").batch_size)


def synonym_entries(classes) -> list[str]:
    """Held-out names of every class ("ocean, pond" for water): never in a training caption."""
    return [", ".join(EVAL_SYNONYMS[c]) for c in classes]


def sseg_overrides(seed: int, args) -> list[str]:
    """The overrides every S-Seg run of a seed shares."""
    return [f"seed={seed}", f"data={args.world_dir}", f"eval.root={args.world_dir}", "progress=false"] + args.extra


def run_chain(seed: int, args) -> tuple[dict, dict]:
    """S-Seg, its S-Seg+ and B2 of one seed, in that order (S-Seg+ and B2 read S-Seg's run folder)."""
    device = torch.device(args.device)
    base = sseg_overrides(seed, args)
    out = Path(args.out) / f"seed{seed}"
    row, times = {}, {}
    t = time.perf_counter()
    res = sseg.run(CONFIGS / "synthetic.yaml", base + [f"out_dir={out / 'sseg'}"], overwrite=True)
    model, cfg = sseg.load_sseg(res["checkpoint"], str(device))
    val = build_dataset("synthetic", args.world_dir, split="val")
    row["sseg"] = 100 * res["miou"]
    row["sseg_scratch_synonyms"] = 100 * sseg.evaluate_sseg(model, cfg, device, synonym_entries(val.classes),
                                                            dataset=val).miou
    times["sseg"] = time.perf_counter() - t
    t = time.perf_counter()
    plus = sseg_plus.run(CONFIGS / "synthetic_plus.yaml", [
        f"seed={seed}", f"sseg_checkpoint={res['checkpoint']}", f"target_images={args.world_dir}/images/train",
        f"eval.root={args.world_dir}", f"out_dir={out / 'sseg_plus'}", "progress=false", "eval_teacher=false"]
        + args.plus_extra, overwrite=True)
    row["sseg_plus"] = 100 * plus["miou"]
    times["sseg_plus"] = time.perf_counter() - t
    t = time.perf_counter()
    b2 = train_b2(cfg, out / "sseg", device)
    report = evaluate(b2, val, b2_protocol(cfg), progress=False, device=device)
    row["b2"] = 100 * report.miou
    times["b2"] = time.perf_counter() - t
    return row, times


def run_minilm(seed: int, args) -> tuple[dict, dict]:
    """S-Seg with the frozen MiniLM text encoder: mIoU by class name and by unseen synonyms; and B2 with
    the same text encoder, by class name."""
    device = torch.device(args.device)
    base = sseg_overrides(seed, args)
    t = time.perf_counter()
    res = sseg.run(CONFIGS / "synthetic.yaml", base + [f"out_dir={Path(args.out) / f'seed{seed}' / 'sseg_minilm'}",
                                                       "text_encoder=minilm", f"batch_size={args.minilm_batch}"],
                   overwrite=True)
    model, cfg = sseg.load_sseg(res["checkpoint"], str(device))
    val = build_dataset("synthetic", args.world_dir, split="val")
    row = {"minilm_names": 100 * res["miou"],
           "minilm_synonyms": 100 * sseg.evaluate_sseg(model, cfg, device, synonym_entries(val.classes),
                                                       dataset=val).miou}
    times = {"minilm": time.perf_counter() - t}
    t = time.perf_counter()
    b2 = train_b2(cfg, Path(res["out_dir"]), device)
    report = evaluate(b2, val, b2_protocol(cfg), progress=False, device=device)
    row["b2_minilm"] = 100 * report.miou
    times["b2_minilm"] = time.perf_counter() - t
    return row, times


TASKS = {"chain": (run_chain, 8.4), "minilm": (run_minilm, 3.7)}  # relative cost, for packing


def one_task(task: tuple) -> tuple[int, dict, dict]:
    """Run one (kind, seed) in this process with ``args.threads`` torch threads."""
    kind, seed, args = task
    torch.set_num_threads(args.threads)
    row, times = TASKS[kind][0](seed, args)
    print(f"seed {seed} {kind}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items())
          + " | seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()), flush=True)
    return seed, row, times


def prepare_world(args) -> None:
    """Write the synthetic world once, before the workers start (every run would otherwise race to)."""
    from leafseg.training import load_config

    cfg = load_config(sseg.SSegConfig, CONFIGS / "synthetic.yaml", [f"data={args.world_dir}"] + args.extra)
    cfg.synthetic.ensure(cfg.data)


def gap(rows: list[dict], better: str, worse: str, paired: bool = False) -> tuple[float, float, list[float]]:
    """Mean difference of two figures, its seed spread and the per-seed differences. The spread is the two
    standard deviations added, or with ``paired`` (the two figures of a seed come from one run, as S-Seg+
    from its own S-Seg teacher) the standard deviation of the per-seed differences."""
    a, b = [r[better] for r in rows], [r[worse] for r in rows]
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    if len(rows) < 2:
        spread = 0.0
    elif paired:
        spread = statistics.stdev(diffs)
    else:
        spread = statistics.stdev(a) + statistics.stdev(b)
    return statistics.mean(a) - statistics.mean(b), spread, diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    ap.add_argument("--out", default="runs/bench_sseg")
    ap.add_argument("--world-dir", default=None, help="synthetic world folder (default: OUT/world_<world>)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                    help="runs in parallel, one process each (default: 2, one per core)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every S-Seg run")
    ap.add_argument("--plus-set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for S-Seg+")
    ap.add_argument("--minilm-batch", type=int, default=32,
                    help="batch size of the two MiniLM runs (default 32: half the config's, for the time budget)")
    ap.add_argument("--quick", action="store_true", help="tiny world and 30 steps: checks the pipeline only")
    args = ap.parse_args()
    world_seed, args.seeds = resolve(args)
    args.protocol = describe(args)
    args.world_dir = args.world_dir or str(Path(args.out) / f"world_{args.world}")
    args.extra = (QUICK if args.quick else []) + list(args.set) + [f"synthetic.seed={world_seed}"]
    args.plus_extra = (["iterations=20"] if args.quick else []) + list(args.plus_set)
    if args.quick:
        args.seeds = args.seeds[:1]
    print(f"sseg_synthetic on the {describe(args)}", flush=True)
    device = torch.device(args.device)
    if device.type == "cuda":
        args.workers = 1
    start = time.perf_counter()
    prepare_world(args)
    tasks = sorted(((kind, seed, args) for seed in args.seeds for kind in TASKS), key=lambda t: -TASKS[t[0]][1])
    rows = {seed: {} for seed in args.seeds}
    if args.workers > 1:
        with mp.get_context("spawn").Pool(args.workers, die_with_parent, (os.getpid(),)) as pool:
            results = list(pool.imap_unordered(one_task, tasks))
    else:
        results = [one_task(task) for task in tasks]
    for seed, row, _ in results:
        rows[seed].update(row)
    rows = [rows[seed] for seed in args.seeds]
    minutes = (time.perf_counter() - start) / 60

    def stat(key: str) -> str:
        values = [r[key] for r in rows]
        spread = f"±{statistics.stdev(values):.1f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.1f}{spread}"

    def judge(better: str, worse: str, label: str, paired: bool = False) -> str:
        return verdict(label, [r[better] for r in rows], [r[worse] for r in rows], args, paired)

    verdicts = "; ".join([judge("sseg", "b2", "S-Seg - B2"), judge("sseg_plus", "sseg", "S-Seg+ - S-Seg", True),
                          judge("minilm_names", "b2_minilm", "with MiniLM text: S-Seg - B2")])

    for seed, row in zip(args.seeds, rows, strict=True):
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()))
    print(verdicts)
    label = device.type if device.type == "cpu" else torch.cuda.get_device_name(device)
    label += f", {args.workers} processes x {args.threads} thread" if device.type == "cpu" else ""
    print(f"sseg_synthetic [{args.protocol}; {label}, torch {torch.__version__}, {minutes:.1f} min"
          f"{', QUICK' if args.quick else ''}]: mIoU by class name: S-Seg {stat('sseg')}, S-Seg+ {stat('sseg_plus')}, "
          f"B2 pseudo-mask ViT {stat('b2')}; MiniLM text: names {stat('minilm_names')}, unseen synonyms "
          f"{stat('minilm_synonyms')}, B2 {stat('b2_minilm')} (scratch text on unseen synonyms "
          f"{stat('sseg_scratch_synonyms')}); {verdicts}")


if __name__ == "__main__":
    main()
