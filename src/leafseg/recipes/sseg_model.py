"""S-Seg's model and inference: MaskFormer without class head + text encoder + 2-layer MLP projections
+ a learned temperature; class names x templates -> per-mask class probabilities -> sum over queries
of class probability x mask probability; model state in and out of checkpoints; ``segment`` for one
image. The training loop is in :mod:`leafseg.recipes.sseg`."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from leafseg.eval.methods import Segmenter
from leafseg.eval.prompts import reduce_queries, text_embeddings
from leafseg.heads.maskformer import MLP, build_maskformer, semantic_inference
from leafseg.losses.contrastive import ContrastiveLoss
from leafseg.losses.matching import MaskMatchingLoss
from leafseg.recipes.sseg_config import SSegConfig
from leafseg.training import config_dict, load_config, read_exported


# ------------------------------------------------------------------------------------ model
class SSegModel(nn.Module):
    """MaskFormer + text encoder + 2-layer MLP projections into one space + learned temperature.

    forward(images (B, 3, H, W) in [0, 1], captions: B str or None, timer, nouns: U str) -> dict: ``masks``
    (B, N, h, w) logits, ``features`` (B, N, D), ``aux`` (earlier layers), and with captions
    ``image_embedding`` (B, E) = projection of the mean mask feature, ``text_embedding`` (B, E),
    ``noun_embedding`` (U, E) of the ``nouns`` prompts (U = 0 without), ``logit_scale`` (scalar).
    Embeddings are not normalised.
    """

    def __init__(self, maskformer: nn.Module, text: nn.Module, *, embed_dim: int = 256,
                 init_temperature: float = 0.07, pool: str = "mean_project"):
        super().__init__()
        if pool not in ("mean_project", "project_mean"):
            raise ValueError(f"pool must be mean_project or project_mean, got {pool!r}")
        self.maskformer, self.text, self.pool = maskformer, text, pool
        dim = maskformer.decoder.norm.normalized_shape[0]
        self.image_proj = MLP(dim, dim, embed_dim, 2)
        self.text_proj = MLP(text.out_dim, text.out_dim, embed_dim, 2)
        self.contrastive = ContrastiveLoss(init_temperature)

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """texts (T str) -> (T, E) joint-space embeddings (not normalised)."""
        return self.text_proj(self.text(list(texts)).float())

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """texts -> (T, E) unit embeddings (what :func:`leafseg.eval.prompts.text_embeddings` calls)."""
        return F.normalize(self.embed_text(texts), dim=-1)

    def forward(self, images: torch.Tensor, captions: list[str] | None = None, timer=None,
                nouns: list[str] | None = None) -> dict:
        timer = timer or no_timer
        with timer("backbone"):
            maps = self.maskformer.backbone(images)
        with timer("heads"):
            out = self.maskformer.decode(maps)
        if captions is not None:
            with timer("text"):
                text = self.embed_text(list(captions) + list(nouns or []))
                out["text_embedding"], out["noun_embedding"] = text[: len(captions)], text[len(captions):]
            feats = out["features"].float()
            out["image_embedding"] = (self.image_proj(feats.mean(1)) if self.pool == "mean_project"
                                      else self.image_proj(feats).mean(1))
            out["logit_scale"] = self.contrastive.scale
        return out

    @torch.no_grad()
    def semantic(self, images: torch.Tensor, text: torch.Tensor, query_classes: torch.Tensor | None = None,
                 num_classes: int | None = None) -> torch.Tensor:
        """Class scores (B, C, h, w) = sum over queries of P(class | mask feature) x P(pixel in mask).

        text: (Q, E) unit embeddings of the class names (Q >= C when classes have several names:
        ``query_classes`` (Q,) gives each name's class; a class takes its best name's similarity).
        """
        out = self.maskformer(images)
        feats = F.normalize(self.image_proj(out["features"].float()), dim=-1)  # (B, N, E)
        logits = self.contrastive.scale * feats @ text.to(feats).t()  # (B, N, Q)
        if query_classes is not None:
            c = num_classes or int(query_classes.max()) + 1
            logits = reduce_queries(logits.transpose(1, 2), query_classes, c).transpose(1, 2)
        return semantic_inference(out["masks"], logits.softmax(-1))


def no_timer(name: str):
    """The timer used when none is given: times nothing."""
    return contextlib.nullcontext()


def build_model(cfg: SSegConfig, tokenizer, device) -> SSegModel:
    """The S-Seg model on ``device`` (train mode)."""
    from leafseg.text import build_text_encoder

    maskformer = build_maskformer(
        cfg.backbone, weights=cfg.weights, device=str(device), arch_overrides=cfg.arch_overrides or None,
        layers=cfg.layers, strides=tuple(cfg.strides), num_queries=cfg.num_queries, hidden_dim=cfg.hidden_dim,
        dec_layers=cfg.dec_layers, heads=cfg.dec_heads, ffn_dim=cfg.ffn_dim, mask_dim=cfg.mask_dim,
        conv_dim=cfg.conv_dim, memory_level=cfg.memory_level, masked_attention=cfg.masked_attention,
        mask_pooling=cfg.mask_pooling, stem_channels=cfg.stem_channels)
    text = build_text_encoder(cfg.text_encoder, tokenizer=tokenizer, width=cfg.text_width, layers=cfg.text_layers,
                              heads=cfg.text_heads, context_length=cfg.context_length,
                              minilm_weights=cfg.minilm_weights, frozen=cfg.text_frozen, device=str(device))
    return SSegModel(maskformer, text, embed_dim=cfg.embed_dim, init_temperature=cfg.init_temperature,
                     pool=cfg.pool).to(device)


def build_criterion(cfg: SSegConfig) -> MaskMatchingLoss:
    return MaskMatchingLoss(cfg.pseudo_masks.k, dice_weight=cfg.lambda_dice, focal_weight=cfg.lambda_focal,
                            alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)


# ------------------------------------------------------------------------------- evaluation
class SSegSegmenter(Segmenter):
    """A trained S-Seg model for the harness: ``prepare`` encodes the class names (every name of
    an entry x the protocol's templates); forward(images (B, 3, H, W)) -> class scores (B, C, H/4, W/4)
    (class probabilities: the ``sseg`` preset's ``activation: identity``)."""

    activation = "identity"

    def __init__(self, model: SSegModel):
        super().__init__()
        self.model = model
        self.text, self.names_to_classes, self.num_classes = None, None, 0

    def prepare(self, class_names, protocol) -> None:
        emb = text_embeddings(self.model.encode_text, class_names, protocol.templates)
        self.text, self.names_to_classes = emb.embeddings, emb.query_classes
        self.num_classes = len(class_names)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.text is None:
            raise RuntimeError("SSegSegmenter.prepare(class_names, protocol) must be called before inference")
        return self.model.semantic(images, self.text, self.names_to_classes, self.num_classes)


def evaluate_sseg(model: SSegModel, cfg: SSegConfig, device, class_names=None, out_dir=None, dataset=None,
                  protocol=None):
    """Harness evaluation on ``cfg.eval``'s dataset (or ``dataset``) under ``cfg.eval``'s protocol (or
    ``protocol``); ``class_names`` replace the dataset's names as prompts (entries may hold synonyms).
    Returns the :class:`EvalReport`."""
    from leafseg.data.datasets import build_dataset
    from leafseg.eval.harness import evaluate

    dataset = dataset or build_dataset(cfg.eval.dataset, cfg.eval.root, split=cfg.eval.split)
    protocol = protocol or cfg.eval.resolve(getattr(dataset, "name", None) or cfg.eval.dataset)
    was_training = model.training
    report = evaluate(SSegSegmenter(model.eval()), dataset, protocol, out_dir, progress=False,
                      device=device, class_names=class_names, method_name="sseg", config=config_dict(cfg))
    model.train(was_training)
    return report


# ------------------------------------------------------------------------------- checkpoint
def model_state(model: SSegModel, cfg: SSegConfig) -> dict:
    """The model's tensors, without a frozen MiniLM (rebuilt from its package on load)."""
    state = model.state_dict()
    if cfg.text_encoder == "minilm" and cfg.text_frozen:
        state = {k: v for k, v in state.items() if not k.startswith("text.")}
    return state


def load_model_state(model: SSegModel, state: dict) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith("text.encoder.")] + list(unexpected)
    if bad:
        raise ValueError(f"checkpoint does not fit the model: {bad[:5]}")


def load_sseg(path: str | Path, device: str = "cpu") -> tuple[SSegModel, SSegConfig]:
    """A trained model (eval mode) and its config from exported weights (``final.pt``) or a training
    checkpoint."""
    exported = read_exported(path)
    if exported["recipe"] != "sseg":
        raise ValueError(f"{path}: not S-Seg weights (recipe {exported['recipe']!r})")
    return rebuild(exported, device)


def rebuild(exported: dict, device) -> tuple[SSegModel, SSegConfig]:
    """The model and config of exported weights (:func:`leafseg.training.read_exported`)."""
    from leafseg.text import tokenizer_from_state

    cfg = load_config(SSegConfig, None, {**exported["config"], "weights": "random"})
    tokenizer = tokenizer_from_state(exported["extra"]["tokenizer"]) if exported["extra"].get("tokenizer") else None
    model = build_model(cfg, tokenizer, torch.device(device))
    load_model_state(model, exported["model"])
    return model.eval(), cfg


def load_segmenter(exported: dict, device: str) -> SSegSegmenter:
    """Exported S-Seg weights as a harness method (class names are given at ``prepare``)."""
    return SSegSegmenter(rebuild(exported, device)[0])
