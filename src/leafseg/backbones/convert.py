"""Key tables between the authors' checkpoint formats and the Hugging Face Hub format.

Hub format means the names ``from_pretrained``/``save_pretrained`` read and write (for example
``encoder.layer.0.attention.attention.query.weight``), not the in-memory module names. Loading
goes authors' keys -> Hub keys -> ``from_pretrained(None, config=..., state_dict=...)``, so the
transformers library does its own renaming to whatever its modules are called.

Every table is written once as (authors' name, Hub name) pairs and used in both directions.
A template ending in "." is a prefix (".weight"/".bias" pass through); ``{i}`` is a block index.
"""

from __future__ import annotations

import math
import re

import torch

from .registry import BackboneSpec

Rule = tuple[str, str]
Fused = tuple[str, tuple[str, str, str]]

_VIT_COMMON: list[Rule] = [
    ("cls_token", "embeddings.cls_token"),
    ("pos_embed", "embeddings.position_embeddings"),
    ("mask_token", "embeddings.mask_token"),
    ("register_tokens", "embeddings.register_tokens"),
    ("patch_embed.proj.", "embeddings.patch_embeddings.projection."),
    ("blocks.{i}.attn.proj.", "encoder.layer.{i}.attention.output.dense."),
    ("norm.", "layernorm."),
]
_DINO_RULES: list[Rule] = _VIT_COMMON + [
    ("blocks.{i}.norm1.", "encoder.layer.{i}.layernorm_before."),
    ("blocks.{i}.norm2.", "encoder.layer.{i}.layernorm_after."),
    ("blocks.{i}.mlp.fc1.", "encoder.layer.{i}.intermediate.dense."),
    ("blocks.{i}.mlp.fc2.", "encoder.layer.{i}.output.dense."),
]
_DINOV2_RULES: list[Rule] = _VIT_COMMON + [
    ("blocks.{i}.norm1.", "encoder.layer.{i}.norm1."),
    ("blocks.{i}.norm2.", "encoder.layer.{i}.norm2."),
    ("blocks.{i}.ls1.gamma", "encoder.layer.{i}.layer_scale1.lambda1"),
    ("blocks.{i}.ls2.gamma", "encoder.layer.{i}.layer_scale2.lambda1"),
    ("blocks.{i}.mlp.fc1.", "encoder.layer.{i}.mlp.fc1."),
    ("blocks.{i}.mlp.fc2.", "encoder.layer.{i}.mlp.fc2."),
    ("blocks.{i}.mlp.w12.", "encoder.layer.{i}.mlp.weights_in."),
    ("blocks.{i}.mlp.w3.", "encoder.layer.{i}.mlp.weights_out."),
]
_VIT_FUSED: list[Fused] = [
    (f"blocks.{{i}}.attn.qkv.{s}", tuple(f"encoder.layer.{{i}}.attention.attention.{n}.{s}"
                                         for n in ("query", "key", "value")))
    for s in ("weight", "bias")
]


def _clip_block_rules(off: str, hub: str) -> tuple[list[Rule], list[Fused]]:
    rules = [(off + a, hub + b) for a, b in [
        ("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("attn.out_proj.", "self_attn.out_proj."),
        ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."),
    ]]
    fused = [(f"{off}attn.in_proj_{s}", tuple(f"{hub}self_attn.{n}_proj.{s}" for n in "qkv"))
             for s in ("weight", "bias")]
    return rules, fused


_CLIP_RULES: list[Rule] = [
    ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("visual.ln_pre.", "vision_model.pre_layrnorm."),
    ("visual.ln_post.", "vision_model.post_layernorm."),
    ("visual.proj", "visual_projection.weight"),
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("ln_final.", "text_model.final_layer_norm."),
    ("text_projection", "text_projection.weight"),
    ("logit_scale", "logit_scale"),
]
_CLIP_FUSED: list[Fused] = []
for _off, _hub in [("visual.transformer.resblocks.{i}.", "vision_model.encoder.layers.{i}."),
                   ("transformer.resblocks.{i}.", "text_model.encoder.layers.{i}.")]:
    _r, _f = _clip_block_rules(_off, _hub)
    _CLIP_RULES += _r
    _CLIP_FUSED += _f
_CLIP_TRANSPOSED = {"visual.proj", "text_projection"}
_CLIP_DROP = {"input_resolution", "context_length", "vocab_size"}

TABLES = {
    "dino": (_DINO_RULES, _VIT_FUSED, set()),
    "dinov2": (_DINOV2_RULES, _VIT_FUSED, set()),
    "clip": (_CLIP_RULES, _CLIP_FUSED, _CLIP_TRANSPOSED),
}


def _pattern(template: str) -> re.Pattern:
    body = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)")
    return re.compile("^" + body + ("(?P<rest>.*)$" if template.endswith(".") else "$"))


def _match(key: str, templates: list[tuple[str, object]]) -> tuple[object, dict] | None:
    for template, payload in templates:
        m = _pattern(template).match(key)
        if m:
            return payload, m.groupdict()
    return None


def _drop(key: str) -> bool:
    """Entries that are not weights of the backbone (OpenAI metadata, buffers, HF pooler)."""
    return key in _CLIP_DROP or key.endswith("position_ids") or key.startswith("pooler.")


def to_hub(sd: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """Authors' state dict -> Hub-format state dict for ``family`` ("dino", "dinov2", "clip").

    Fused q/k/v tensors (3C, ...) are split into three (C, ...) row blocks in the order q, k, v.
    Raises ``KeyError`` naming keys that no table entry covers.
    """
    rules, fused, transposed = TABLES[family]
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        if _drop(key):
            continue
        hit = _match(key, [(off, hub) for off, hub in fused])
        if hit:
            targets, g = hit
            for name, part in zip(targets, value.chunk(3, dim=0), strict=True):
                out[name.format(i=g["i"])] = part.contiguous()
            continue
        hit = _match(key, [(off, hub) for off, hub in rules])
        if hit is None:
            unknown.append(key)
            continue
        hub, g = hit
        value = value.t().contiguous() if key in transposed else value
        out[hub.format(i=g.get("i")) + (g.get("rest") or "")] = value
    if unknown:
        raise KeyError(f"{len(unknown)} unrecognised {family} checkpoint keys, e.g. {unknown[:5]}")
    return out


def from_hub(sd: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """Hub-format state dict -> authors' state dict (inverse of :func:`to_hub`)."""
    rules, fused, transposed = TABLES[family]
    out: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    for off, (q, k, v) in fused:
        for key in sd:
            m = _pattern(q).match(key)
            if m:
                names = [t.format(i=m["i"]) for t in (q, k, v)]
                out[off.format(i=m["i"])] = torch.cat([sd[n] for n in names], dim=0)
                consumed.update(names)
    unknown = []
    for key, value in sd.items():
        if key in consumed or _drop(key):
            continue
        hit = _match(key, [(hub, off) for off, hub in rules])
        if hit is None:
            unknown.append(key)
            continue
        off, g = hit
        name = off.format(i=g.get("i")) + (g.get("rest") or "")
        out[name] = value.t().contiguous() if name in transposed else value
    if unknown:
        raise KeyError(f"{len(unknown)} unrecognised {family} Hub keys, e.g. {unknown[:5]}")
    return out


def detect_format(sd: dict[str, torch.Tensor]) -> str:
    """"official" (authors' names) or "hub" (Hugging Face names) for a vit or CLIP state dict."""
    keys = set(sd)
    if {"cls_token", "visual.conv1.weight", "token_embedding.weight", "pos_embed"} & keys:
        return "official"
    if any(k.startswith(("embeddings.", "vision_model.", "text_model.")) for k in keys):
        return "hub"
    raise KeyError("neither the authors' nor the Hugging Face key names were found "
                   f"(first keys: {sorted(keys)[:5]})")


def _count_blocks(sd: dict[str, torch.Tensor], prefix: str) -> int:
    pat = re.compile("^" + re.escape(prefix) + r"(\d+)\.")
    idx = {int(m[1]) for k in sd if (m := pat.match(k))}
    if not idx:
        raise KeyError(f"no blocks under {prefix!r}")
    return max(idx) + 1


def vit_config(spec: BackboneSpec) -> dict:
    """Hugging Face config keywords for the full-size DINO / DINOv2 architecture of ``spec``."""
    kw = dict(hidden_size=spec.embed_dim, num_hidden_layers=spec.depth, num_attention_heads=spec.heads,
              image_size=spec.image_size, patch_size=spec.patch_size, layer_norm_eps=spec.layer_norm_eps,
              hidden_act="gelu")
    if spec.family == "dino":
        kw.update(intermediate_size=spec.mlp_dim, qkv_bias=True)
    else:
        kw.update(mlp_ratio=spec.mlp_dim // spec.embed_dim, layerscale_value=1.0, use_swiglu_ffn=spec.swiglu)
        if spec.registers:
            kw.update(num_register_tokens=spec.registers)
    return kw


def infer_vit_config(sd: dict[str, torch.Tensor], spec: BackboneSpec) -> dict:
    """Config keywords read off an authors' DINO / DINOv2 state dict.

    Width, depth, patch, grid, MLP width, SwiGLU and registers come from tensor shapes. The
    head count is not stored: it is the registry's when the width matches, else width / 64
    (every released DINO / DINOv2 / CLIP model uses 64-wide heads).
    """
    kw = vit_config(spec)
    dim = sd["cls_token"].shape[-1]
    patch = sd["patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(sd["pos_embed"].shape[1] - 1)
    kw.update(hidden_size=dim, num_hidden_layers=_count_blocks(sd, "blocks."), patch_size=patch,
              image_size=grid * patch, num_attention_heads=spec.heads if dim == spec.embed_dim else max(1, dim // 64))
    if spec.family == "dino":
        kw.update(intermediate_size=sd["blocks.0.mlp.fc1.weight"].shape[0],
                  qkv_bias="blocks.0.attn.qkv.bias" in sd)
        return kw
    swiglu = "blocks.0.mlp.w12.weight" in sd
    hidden = 4 * dim if swiglu else sd["blocks.0.mlp.fc1.weight"].shape[0]
    if hidden % dim:
        raise ValueError(f"MLP width {hidden} is not a whole multiple of the width {dim}")
    kw.update(use_swiglu_ffn=swiglu, mlp_ratio=hidden // dim)
    if swiglu and sd["blocks.0.mlp.w12.weight"].shape[0] != 2 * ((int(4 * dim * 2 / 3) + 7) // 8 * 8):
        raise ValueError("SwiGLU hidden width differs from the DINOv2 rule ((int(8D/3)+7)//8*8)")
    regs = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
    if bool(regs) != bool(spec.registers):
        want = "with" if spec.registers else "without"
        raise ValueError(f"{spec.name} is a model {want} register tokens but the checkpoint has {regs}; "
                         "pick the matching registry name (the *_reg names have registers)")
    if regs:
        kw.update(num_register_tokens=regs)
    return kw


def clip_config(spec: BackboneSpec) -> dict:
    """CLIPConfig keywords for the full-size architecture of ``spec``."""
    vocab = spec.vocab_size
    return dict(
        projection_dim=spec.proj_dim,
        vision_config=dict(hidden_size=spec.embed_dim, num_hidden_layers=spec.depth, num_attention_heads=spec.heads,
                           intermediate_size=spec.mlp_dim, image_size=spec.image_size, patch_size=spec.patch_size,
                           hidden_act="quick_gelu", layer_norm_eps=spec.layer_norm_eps),
        text_config=dict(hidden_size=spec.text_dim, num_hidden_layers=spec.text_depth,
                         num_attention_heads=spec.text_heads, intermediate_size=4 * spec.text_dim,
                         max_position_embeddings=spec.context_length, vocab_size=vocab, hidden_act="quick_gelu",
                         layer_norm_eps=spec.layer_norm_eps, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                         pad_token_id=vocab - 1),
    )


def infer_clip_config(sd: dict[str, torch.Tensor], spec: BackboneSpec) -> dict:
    """CLIPConfig keywords read off an OpenAI state dict, following OpenAI's ``build_model``.

    Heads are width / 64 for both towers; the end-of-text token is the last vocabulary entry and
    the start-of-text token the one before it (as in OpenAI's tokenizer).
    """
    kw = clip_config(spec)
    conv = sd["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = math.isqrt(sd["visual.positional_embedding"].shape[0] - 1)
    kw["vision_config"].update(
        hidden_size=width, num_hidden_layers=_count_blocks(sd, "visual.transformer.resblocks."),
        num_attention_heads=max(1, width // 64), patch_size=patch, image_size=grid * patch,
        intermediate_size=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
    twidth, vocab = sd["ln_final.weight"].shape[0], sd["token_embedding.weight"].shape[0]
    kw["text_config"].update(
        hidden_size=twidth, num_hidden_layers=_count_blocks(sd, "transformer.resblocks."),
        num_attention_heads=max(1, twidth // 64), vocab_size=vocab,
        intermediate_size=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        max_position_embeddings=sd["positional_embedding"].shape[0],
        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    kw["projection_dim"] = sd["text_projection"].shape[1]
    return kw


def merge_overrides(kw: dict, overrides: dict | None) -> dict:
    """Recursively update config keywords (nested dicts such as ``vision_config`` merge)."""
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(kw.get(key), dict):
            merge_overrides(kw[key], value)
        else:
            kw[key] = value
    return kw


def unwrap_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """Find the backbone weights in a loaded checkpoint object.

    Handles DINO full checkpoints ({"teacher": ..., "student": ...}: the teacher is used),
    {"state_dict"/"model": ...} wrappers, and ``module.``/``backbone.`` prefixes (keys outside
    ``backbone.``, such as projection heads, are dropped). Non-tensor entries are dropped.
    """
    for wrapper in ("teacher", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise TypeError(f"expected a state dict, found {type(obj).__name__}")
    sd = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("backbone.") for k in sd):
        sd = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    for prefix in ("dinov2_with_registers.", "dinov2.", "vit."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
    return sd
