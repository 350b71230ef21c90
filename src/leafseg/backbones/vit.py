"""DINO (ViTModel) and DINOv2 (Dinov2Model, Dinov2WithRegistersModel) image encoders.

Off the native grid (224 / p for DINO, 518 / 14 = 37 for DINOv2) the position embeddings are
interpolated to the padded patch grid (h, w) by the authors' rule (``pos_embed.py``), with
``table`` the (1, C, M, M) patch embeddings:

- DINO: ``F.interpolate(table, scale_factor=((h + 0.1) / M, (w + 0.1) / M), mode="bicubic")``;
- DINOv2: the same in float32;
- DINOv2 with registers: ``F.interpolate(table, size=(h, w), mode="bicubic", antialias=True)`` in
  float32, which is also what transformers does for these models.

``pos_interpolation="hf"`` uses the transformers embedding modules instead (bicubic to
``size=(h, w)`` for ViTModel and Dinov2Model), which differ from the authors by up to ~5e-2 at
other sizes on real DINOv2 weights; ``"dino"`` applies DINO's rule to any of these models. At the
native grid every choice runs the transformers module and gives the same features.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import ImageEncoder
from .convert import infer_vit_config, merge_overrides, vit_config
from .loading import from_pretrained, load_official, random_model
from .pos_embed import interpolate_table
from .registry import BackboneSpec
from .sources import Source, read_folder_config


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of a Hugging Face ViT-like model."""
    for path in ("layers", "encoder.layer", "encoder.layers"):
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList):
            return module
    raise AttributeError(f"cannot find the transformer blocks of {type(model).__name__}")


def find_qkv(block: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The (query, key, value) linear layers of one block, whatever transformers calls them."""
    for attn_path in ("attention", "attention.attention", "self_attn"):
        attn = block
        for part in attn_path.split("."):
            attn = getattr(attn, part, None)
        for names in (("q_proj", "k_proj", "v_proj"), ("query", "key", "value")):
            mods = [getattr(attn, n, None) for n in names]
            if all(isinstance(m, nn.Linear) for m in mods):
                return mods[0], mods[1], mods[2]
    raise AttributeError(f"cannot find the q/k/v projections of {type(block).__name__}")


class ViTEncoder(ImageEncoder):
    """A DINO or DINOv2 backbone: ``features(images, layers, kind)`` -> (B, C, h, w) maps.

    ``model`` is the wrapped Hugging Face model (``ViTModel`` without pooler, ``Dinov2Model``
    or ``Dinov2WithRegistersModel``); its parameters are trainable. ``authors_pos_rule`` and
    ``pos_interpolation``: see ``ImageEncoder`` (an empty rule means the transformers one).
    """

    def __init__(self, model: nn.Module, *, name: str, mean, std, authors_pos_rule: str = "",
                 pos_interpolation: str | None = None) -> None:
        cfg = model.config
        super().__init__(name=name, patch_size=cfg.patch_size, embed_dim=cfg.hidden_size,
                         num_blocks=cfg.num_hidden_layers, mean=mean, std=std,
                         num_registers=getattr(cfg, "num_register_tokens", 0) or 0,
                         authors_pos_rule=authors_pos_rule, pos_interpolation=pos_interpolation)
        self.model = model
        self._interpolate_flag = cfg.model_type == "vit"
        self.native_grid = (math.isqrt(model.embeddings.position_embeddings.shape[1] - 1),) * 2

    @property
    def blocks(self) -> nn.ModuleList:
        return find_blocks(self.model)

    @property
    def final_norm_layer(self) -> nn.Module:
        return self.model.layernorm

    def _embed(self, pixels):
        """pixels (B, 3, H, W) -> tokens (B, 1 + R + H*W/p^2, C): [CLS, registers, patches].

        The transformers embedding module at the native grid or with the "hf" rule; otherwise
        the same steps (patch projection, class token, position embeddings by ``pos_rule``,
        registers after the class token, dropout) with the chosen interpolation.
        """
        emb = self.model.embeddings
        grid = (pixels.shape[2] // self.patch_size, pixels.shape[3] // self.patch_size)
        if self.pos_rule == "hf" or grid == self.native_grid:
            return emb(pixels, interpolate_pos_encoding=True) if self._interpolate_flag else emb(pixels)
        x = emb.patch_embeddings(pixels)
        x = torch.cat([emb.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + interpolate_table(emb.position_embeddings, grid, self.pos_rule)
        if self.num_registers:
            x = torch.cat([x[:, :1], emb.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        return emb.dropout(x)

    def _qkv(self, block):
        return find_qkv(block)


def _classes(spec: BackboneSpec):
    import transformers as tf

    if spec.family == "dino":
        return tf.ViTConfig, tf.ViTModel, "vit", {"add_pooling_layer": False}
    if spec.registers:
        return tf.Dinov2WithRegistersConfig, tf.Dinov2WithRegistersModel, "dinov2_with_registers", {}
    return tf.Dinov2Config, tf.Dinov2Model, "dinov2", {}


def build_vit(spec: BackboneSpec, source: Source, arch_overrides: dict | None = None,
              pos_interpolation: str | None = None) -> ViTEncoder:
    """Build a DINO / DINOv2 encoder from random weights, a folder, a Hub id or an authors' file."""
    config_cls, model_cls, model_type, extra = _classes(spec)
    if source.kind == "random":
        config = config_cls(**merge_overrides(vit_config(spec), arch_overrides))
        model = random_model(model_cls, config, **extra)
    elif source.kind == "file":
        kw, state_dict = load_official(spec, source, infer_vit_config, arch_overrides)
        if spec.family == "dinov2" and not spec.registers:
            kw["use_mask_token"] = True
        model = from_pretrained(model_cls, source, config=config_cls(**kw), state_dict=state_dict, **extra)
    else:
        if source.kind == "folder":
            found = read_folder_config(source.path).get("model_type")
            if found != model_type:
                raise ValueError(f"{source.path} holds a {found!r} model but {spec.name} needs {model_type!r}"
                                 + (" (the *_reg names are the register models)" if "dinov2" in str(found) else ""))
        model = from_pretrained(model_cls, source, **extra)
    return ViTEncoder(model, name=spec.name, mean=spec.mean, std=spec.std, authors_pos_rule=spec.pos_rule,
                      pos_interpolation=pos_interpolation)
