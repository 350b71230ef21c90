"""The CLIP of the pretraining recipe: a Hugging Face ``CLIPModel`` of the config's sizes behind leafseg's
:class:`~leafseg.backbones.clip.ClipEncoder`, CLIP's loss, the exported Hugging Face folder, and MaskCLIP
over the trained model for the harness. The training loop is in :mod:`leafseg.recipes.clip_pretrain`.

The text tower pools at the end-of-text token: the tokenizer numbers its special tokens after the learnt
ones (end of text = the largest id, as in OpenAI's vocabulary), and the text config names those ids, so
``CLIPTextModel`` takes the first end-of-text position (its legacy argmax rule, used when the end id is 2,
would pick the same position).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from leafseg.backbones.clip import ClipEncoder
from leafseg.eval.clip_methods import MaskClip
from leafseg.losses.contrastive import contrastive_loss
from leafseg.recipes.clip_pretrain_config import ClipConfig
from leafseg.text.tokenizer import BPETokenizer
from leafseg.training import config_dict, export_weights, load_config

RECIPE = "clip"
NORMALISATION = "clip_vitb16"  # the registry entry whose mean / std the images are normalised with


# ------------------------------------------------------------------------------------ model
def clip_model_config(cfg: ClipConfig, tokenizer: BPETokenizer):
    """The ``transformers.CLIPConfig`` of the config's sizes and the tokenizer's vocabulary and ids."""
    from transformers import CLIPConfig

    v, t = cfg.vision, cfg.text
    vision = dict(hidden_size=v.width, intermediate_size=round(v.width * v.mlp_ratio), num_hidden_layers=v.layers,
                  num_attention_heads=v.heads, image_size=v.image_size, patch_size=v.patch_size,
                  hidden_act=cfg.activation)
    text = dict(hidden_size=t.width, intermediate_size=round(t.width * t.mlp_ratio), num_hidden_layers=t.layers,
                num_attention_heads=t.heads, max_position_embeddings=t.context_length,
                vocab_size=tokenizer.vocab_size, hidden_act=cfg.activation, bos_token_id=tokenizer.start_id,
                eos_token_id=tokenizer.end_id, pad_token_id=tokenizer.pad_id)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.embed_dim,
                      logit_scale_init_value=math.log(1.0 / cfg.init_temperature))


def build_model(cfg: ClipConfig, tokenizer: BPETokenizer, device) -> ClipEncoder:
    """A randomly initialised CLIP (train mode) on ``device``, drawing from torch's global generator."""
    from transformers import CLIPModel

    from leafseg.backbones.loading import random_model
    from leafseg.backbones.registry import get_spec

    spec = get_spec(NORMALISATION)
    model = random_model(CLIPModel, clip_model_config(cfg, tokenizer))
    encoder = ClipEncoder(model, tokenizer.to_hf(), name=spec.name, mean=spec.mean, std=spec.std)
    return encoder.to(device).train()


class ContrastivePair(nn.Module):
    """The trained CLIP as one module for DistributedDataParallel.

    forward(images (B, 3, S, S) in [0, 1], captions: B str) -> dict: ``image_embedding`` (B, E),
    ``text_embedding`` (B, E) (projected, not normalised) and ``logit_scale`` (scalar, exp of the learnt
    log scale).
    """

    def __init__(self, encoder: ClipEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor, captions: list[str]) -> dict:
        return {"image_embedding": self.encoder.image_embedding(images),
                "text_embedding": self.encoder.encode_text(list(captions)),
                "logit_scale": self.encoder.model.logit_scale.exp()}


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """CLIP's loss: the mean of the image-to-text and text-to-image cross-entropies over the batch (with
    the negatives of every process), i.e. half of :func:`leafseg.losses.contrastive.contrastive_loss`.
    image, text: (B, E); logit_scale: 1 / temperature. Returns a scalar."""
    return 0.5 * contrastive_loss(image, text, logit_scale)


@torch.no_grad()
def clamp_logit_scale(encoder: ClipEncoder, max_scale: float) -> None:
    """Keep the learnt log scale in [0, ln(max_scale)] (CLIP clips the scale at 100), in place."""
    encoder.model.logit_scale.clamp_(0.0, math.log(max_scale))


def param_groups(encoder: ClipEncoder, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices (weights, embeddings), none on gains, biases and the
    logit scale."""
    params = [p for p in encoder.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def maskclip(encoder: ClipEncoder, cfg: ClipConfig) -> MaskClip:
    """MaskCLIP over ``encoder`` with the config's ``maskclip`` settings (a harness method)."""
    return MaskClip(encoder, residual=cfg.maskclip.residual, ffn=cfg.maskclip.ffn)


# ----------------------------------------------------------------------------------- export
def export_clip(encoder: ClipEncoder, tokenizer: BPETokenizer, folder: str | Path, cfg: ClipConfig) -> Path:
    """Write the trained CLIP as a Hugging Face folder: tokenizer files, ``config.json`` and, last,
    ``model.safetensors``, whose metadata names the recipe, the run's config and the tokenizer, so the one
    file is both what ``build_backbone("clip_vitb16", weights=folder)`` reads and what
    ``leafseg eval model`` / ``leafseg segment`` load (:func:`load_segmenter`). Returns the folder."""
    from leafseg.backbones.loading import quiet_progress

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder.model.config.architectures = ["CLIPModel"]  # what AutoModel reads
    with quiet_progress():
        tokenizer.to_hf().save_pretrained(str(folder))
        encoder.model.config.save_pretrained(str(folder))
    export_weights(folder / "model.safetensors", encoder.model.state_dict(), recipe=RECIPE, config=config_dict(cfg),
                   extra={"tokenizer": tokenizer.to_str()})
    return folder


def rebuild(exported: dict, device) -> tuple[ClipEncoder, ClipConfig]:
    """The trained CLIP (eval mode) and its run config from exported weights
    (:func:`leafseg.training.read_exported` of ``clip/model.safetensors``)."""
    cfg = load_config(ClipConfig, None, exported["config"])
    tokenizer = BPETokenizer.from_str(exported["extra"]["tokenizer"], cfg.text.context_length)
    encoder = build_model(cfg, tokenizer, torch.device(device))
    encoder.model.load_state_dict(exported["model"])
    return encoder.eval(), cfg


def load_segmenter(exported: dict, device: str) -> MaskClip:
    """Exported CLIP weights as the run's harness method: MaskCLIP over the trained CLIP (open vocabulary:
    class names are given at ``prepare``)."""
    encoder, cfg = rebuild(exported, device)
    return maskclip(encoder, cfg).eval()
