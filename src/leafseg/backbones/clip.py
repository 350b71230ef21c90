"""CLIP (Hugging Face ``CLIPModel``): dense image features plus the text tower.

Image side: the same ``features`` contract as DINO. Blocks run on ``pre_layrnorm``-ed
embeddings; ``final_norm`` applies ``post_layernorm`` (OpenAI's ``ln_post``) to every token
of the last block, which the Hugging Face model only applies to the class token.

Dense CLIP (MaskCLIP / SCLIP style) takes raw last-block tokens or values and maps them into
the joint space with ``project_tokens`` (``post_layernorm`` then ``visual_projection``), so
pass ``final_norm=False`` to ``features`` when ``project_tokens`` will add the norm. Methods that
rebuild the last block from its parts start from ``tokens_before_last_block`` and use
``value_branch`` (attention with every token attending only to itself) and ``mlp_branch``.

Position embeddings: OpenAI's CLIP code never interpolates them (it runs at its native 224 or
336 only), and no convention is fixed for leafseg's dense CLIP methods, so off the native grid the
default is the transformers rule, ``pos_interpolation="hf"``: ``F.interpolate(table, size=(h, w),
mode="bicubic", align_corners=False)`` to the padded patch grid (h, w), with ``table`` the
(1, C, M, M) patch embeddings. ``pos_interpolation="dino"`` selects DINO's rule instead,
``scale_factor=((h + 0.1) / M, (w + 0.1) / M)``, which is what the SCLIP, ClearCLIP and NACLIP code
applies to CLIP (see ``pos_embed.py``). At the native grid both give the same features.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .base import ImageEncoder
from .convert import clip_config, infer_clip_config, merge_overrides
from .loading import from_pretrained, load_official, random_model
from .pos_embed import interpolate_table
from .registry import BackboneSpec
from .sources import Source, read_folder_config
from .vit import find_qkv

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


class ClipEncoder(ImageEncoder):
    """CLIP image encoder with ``encode_text``, ``image_embedding`` and ``project_tokens``.

    ``embed_dim`` (C) is the vision width; ``proj_dim`` (E) is the joint embedding size.
    ``tokenizer`` is None when no tokenizer files came with the weights; ``encode_text`` then
    accepts token ids only. ``pos_interpolation``: "hf" (default) or "dino", see the module docstring.
    """

    def __init__(self, model: nn.Module, tokenizer=None, *, name: str, mean, std,
                 pos_interpolation: str | None = None) -> None:
        vcfg = model.config.vision_config
        super().__init__(name=name, patch_size=vcfg.patch_size, embed_dim=vcfg.hidden_size,
                         num_blocks=vcfg.num_hidden_layers, mean=mean, std=std,
                         pos_interpolation=pos_interpolation)
        self.model = model
        positions = model.vision_model.embeddings.position_embedding.weight.shape[0]
        self.native_grid = (math.isqrt(positions - 1),) * 2
        self.tokenizer = tokenizer
        self.proj_dim = int(model.config.projection_dim)
        self.context_length = int(model.config.text_config.max_position_embeddings)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.vision_model.encoder.layers

    @property
    def final_norm_layer(self) -> nn.Module:
        return self.model.vision_model.post_layernorm

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, H, W) -> tokens (B, 1 + H*W/p^2, C) after ``pre_layrnorm``.

        The transformers embedding module at the native grid or with the "hf" rule; otherwise the
        same steps with the position embeddings interpolated by ``pos_rule``.
        """
        vision = self.model.vision_model
        emb = vision.embeddings
        grid = (pixels.shape[2] // self.patch_size, pixels.shape[3] // self.patch_size)
        if self.pos_rule == "hf" or grid == self.native_grid:
            return vision.pre_layrnorm(emb(pixels, interpolate_pos_encoding=True))
        weight = emb.patch_embedding.weight
        x = emb.patch_embedding(pixels.to(weight.dtype)).flatten(2).transpose(1, 2)
        x = torch.cat([emb.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
        x = x + interpolate_table(emb.position_embedding.weight.unsqueeze(0), grid, self.pos_rule)
        return vision.pre_layrnorm(x)

    def _qkv(self, block):
        return find_qkv(block)

    def value_branch(self, tokens: torch.Tensor, block: int = -1) -> torch.Tensor:
        """tokens (B, N, C) entering ``block`` -> (B, N, C): the block's attention branch when every
        token attends only to itself, ``out_proj(v_proj(layer_norm1(tokens)))`` (no residual).

        With a softmax that puts all weight on the token itself this is exactly the attention
        output; MaskCLIP uses it for the last block (``block=-1``). Gradients flow.
        """
        layer = self.blocks[self.resolve_layers(block)[0]]
        attn = layer.self_attn
        return attn.out_proj(attn.v_proj(layer.layer_norm1(tokens)))

    def mlp_branch(self, tokens: torch.Tensor, block: int = -1) -> torch.Tensor:
        """tokens (B, N, C) -> (B, N, C): ``block``'s MLP branch ``mlp(layer_norm2(tokens))`` (no
        residual; the block itself adds ``tokens`` back). Gradients flow."""
        layer = self.blocks[self.resolve_layers(block)[0]]
        return layer.mlp(layer.layer_norm2(tokens))

    def project_tokens(self, tokens: torch.Tensor, apply_norm: bool = True) -> torch.Tensor:
        """tokens (B, N, C) -> (B, N, E): ``post_layernorm`` (if ``apply_norm``) then the visual
        projection. A map (B, C, h, w) is also accepted and gives (B, E, h, w)."""
        is_map = tokens.ndim == 4
        x = tokens.permute(0, 2, 3, 1) if is_map else tokens
        if apply_norm:
            x = self.final_norm_layer(x)
        x = self.model.visual_projection(x)
        return x.permute(0, 3, 1, 2).contiguous() if is_map else x

    def image_embedding(self, images: torch.Tensor, normalize_input: bool = True) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> (B, E): the projected, post-layernormed class token
        (CLIP's image embedding; not L2-normalised)."""
        cls = self.features(images, layers=(-1,), normalize_input=normalize_input, final_norm=True).cls[0]
        return self.model.visual_projection(cls)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """texts -> {"input_ids", "attention_mask"}: (T, L) tensors on the module's device."""
        if self.tokenizer is None:
            raise ValueError(f"{self.name}: no CLIP tokenizer was found next to the weights, so strings cannot be "
                             "encoded. Pass token ids (a LongTensor of shape (T, L)), or load from a folder that "
                             "also holds the tokenizer files (tokenizer.json or vocab.json + merges.txt).")
        if isinstance(texts, str):
            texts = [texts]
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.context_length,
                               return_tensors="pt")
        return {k: batch[k].to(self.device) for k in ("input_ids", "attention_mask") if k in batch}

    def encode_text(self, texts: list[str] | torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """texts (T strings) or token ids (T, L) -> (T, E) projected text embeddings
        (L2-normalised if ``normalize``). Gradients flow."""
        if isinstance(texts, torch.Tensor):
            batch = {"input_ids": texts.to(self.device, torch.long)}
        else:
            batch = self.tokenize(texts)
        pooled = self.model.text_model(**batch).pooler_output
        emb = self.model.text_projection(pooled)
        return nn.functional.normalize(emb, dim=-1) if normalize else emb


def load_tokenizer(folder: Path | None, hf_id: str = ""):
    """The tokenizer saved in ``folder`` (or downloadable for ``hf_id``), or None if absent."""
    if folder is not None and not any((folder / f).exists() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    where = str(folder) if folder is not None else hf_id
    try:
        return AutoTokenizer.from_pretrained(where, local_files_only=folder is not None)
    except Exception as err:  # noqa: BLE001 - any tokenizer failure is reported with the folder
        raise ValueError(f"cannot load the CLIP tokenizer in {where}: {err}") from err


def build_clip(spec: BackboneSpec, source: Source, arch_overrides: dict | None = None,
               pos_interpolation: str | None = None) -> ClipEncoder:
    """Build a CLIP encoder from random weights, a folder, a Hub id or an OpenAI checkpoint."""
    from transformers import CLIPConfig, CLIPModel

    tokenizer = None
    if source.kind == "random":
        config = CLIPConfig(**merge_overrides(clip_config(spec), arch_overrides))
        model = random_model(CLIPModel, config)
    elif source.kind == "file":
        kw, state_dict = load_official(spec, source, infer_clip_config, arch_overrides)
        model = from_pretrained(CLIPModel, source, config=CLIPConfig(**kw), state_dict=state_dict)
        tokenizer = load_tokenizer(source.path.parent)
    else:
        if source.kind == "folder":
            found = read_folder_config(source.path).get("model_type")
            if found != "clip":
                raise ValueError(f"{source.path} holds a {found!r} model but {spec.name} needs a 'clip' model")
        model = from_pretrained(CLIPModel, source)
        tokenizer = load_tokenizer(source.path, source.hf_id)
    return ClipEncoder(model, tokenizer, name=spec.name, mean=spec.mean, std=spec.std,
                       pos_interpolation=pos_interpolation)
