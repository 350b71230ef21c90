"""Authors' checkpoint formats: conversion on load, checked two ways.

1. The authors' file and the Hugging Face folder holding the same weights give identical
   features (same architecture either way).
2. An independent plain-PyTorch forward pass written from the authors' code (fused qkv, layer
   scale, SwiGLU, registers; OpenAI's CLIP with in_proj and ln_post @ proj) run on the authors'
   tensors agrees with leafseg, so a key-table mistake that survives a round trip is caught.
3. Off the native patch grid the same forward passes resample the position embeddings as the
   authors' code does (DINO's and DINOv2's ``interpolate_pos_encoding``; for CLIP, whose authors
   never resample, the size rule of transformers and the scale-factor rule of the SCLIP code),
   and leafseg agrees with them; ``pos_interpolation="hf"`` is exactly transformers' own forward.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from leafseg.backbones import build_backbone, get_spec, make_random_checkpoint
from leafseg.backbones.convert import from_hub, to_hub
from leafseg.backbones.sources import read_checkpoint
from leafseg.errors import ConfigError

VIT_MODELS = ["dino_vits8", "dino_vitb16", "dinov2_vits14", "dinov2_vitl14_reg", "dinov2_vitg14",
              "dinov2_vitg14_reg"]


def authors_pos_embed(pos_embed, x, w, h, patch_size, offset, antialias):
    """The authors' ``interpolate_pos_encoding`` (DINO's vision_transformer.py; DINOv2's adds the
    float32 round trip, ``interpolate_offset`` and ``interpolate_antialias``), in their names:
    ``B, nc, w, h = images.shape``, so ``w`` is the number of pixel rows and ``h`` of columns.

    pos_embed (1, 1 + M*M, C), x (B, 1 + N, C) the tokens after the class token -> (1, 1 + N, C).
    offset 0.1 scales by (w0 + 0.1) / M; offset 0 (DINOv2 register models) resizes to (w0, h0).
    """
    npatch, n = x.shape[1] - 1, pos_embed.shape[1] - 1
    if npatch == n and w == h:
        return pos_embed
    dtype = x.dtype
    pos = pos_embed.float()
    dim = x.shape[-1]
    w0, h0 = w // patch_size, h // patch_size
    m = int(math.sqrt(n))
    table = pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if offset:
        table = F.interpolate(table, scale_factor=(float(w0 + offset) / m, float(h0 + offset) / m),
                              mode="bicubic", antialias=antialias)
    else:
        table = F.interpolate(table, size=(w0, h0), mode="bicubic", antialias=antialias)
    assert tuple(table.shape[-2:]) == (w0, h0)
    table = table.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([pos[:, :1], table], dim=1).to(dtype)


def authors_vit_forward(sd, images, spec, heads):
    """DINO / DINOv2 VisionTransformer forward at any input size (multiples of the patch size).

    images (B, 3, H, W) normalised -> tokens (B, 1 + R + N, C) after the final norm, plus the
    last block's keys (B, 1 + R + N, C) computed from its fused qkv. Position embeddings are
    resampled as the authors' hub builds do: offset 0.1 without antialiasing for DINO and plain
    DINOv2, offset 0 with antialiasing for DINOv2 with registers.
    """
    eps = 1e-6
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=spec.patch_size)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1)
    offset, antialias = (0.0, True) if "register_tokens" in sd else (0.1, False)
    x = x + authors_pos_embed(sd["pos_embed"], x, images.shape[2], images.shape[3], spec.patch_size, offset,
                              antialias)
    if "register_tokens" in sd:
        x = torch.cat([x[:, :1], sd["register_tokens"].expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    B, N, C = x.shape
    keys = None
    for i in range(depth):
        b = f"blocks.{i}."
        y = F.layer_norm(x, (C,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps)
        qkv = F.linear(y, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"])
        keys = qkv[..., C:2 * C]
        q, k, v = qkv.reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (C // heads) ** -0.5).softmax(-1)
        y = F.linear((attn @ v).transpose(1, 2).reshape(B, N, C), sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        x = x + (y * sd[b + "ls1.gamma"] if b + "ls1.gamma" in sd else y)
        y = F.layer_norm(x, (C,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps)
        if b + "mlp.w12.weight" in sd:
            x1, x2 = F.linear(y, sd[b + "mlp.w12.weight"], sd[b + "mlp.w12.bias"]).chunk(2, dim=-1)
            y = F.linear(F.silu(x1) * x2, sd[b + "mlp.w3.weight"], sd[b + "mlp.w3.bias"])
        else:
            y = F.linear(F.gelu(F.linear(y, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])),
                         sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        x = x + (y * sd[b + "ls2.gamma"] if b + "ls2.gamma" in sd else y)
    return F.layer_norm(x, (C,), sd["norm.weight"], sd["norm.bias"], eps), keys


def openai_block(x, sd, b, heads, mask=None):
    """One OpenAI ResidualAttentionBlock on batch-first tokens (B, N, W)."""
    W = x.shape[-1]
    y = F.layer_norm(x, (W,), sd[b + "ln_1.weight"], sd[b + "ln_1.bias"], 1e-5)
    y = y.transpose(0, 1)
    y = F.multi_head_attention_forward(
        y, y, y, W, heads, sd[b + "attn.in_proj_weight"], sd[b + "attn.in_proj_bias"], None, None, False, 0.0,
        sd[b + "attn.out_proj.weight"], sd[b + "attn.out_proj.bias"], need_weights=False, attn_mask=mask)[0]
    x = x + y.transpose(0, 1)
    y = F.layer_norm(x, (W,), sd[b + "ln_2.weight"], sd[b + "ln_2.bias"], 1e-5)
    y = F.linear(y, sd[b + "mlp.c_fc.weight"], sd[b + "mlp.c_fc.bias"])
    y = y * torch.sigmoid(1.702 * y)
    return x + F.linear(y, sd[b + "mlp.c_proj.weight"], sd[b + "mlp.c_proj.bias"])


def clip_pos_embed(positional_embedding, rows, cols, rule):
    """CLIP's (1 + M*M, W) position embeddings for a rows x cols patch grid -> (1 + rows*cols, W).

    OpenAI's code has no resampling. "size": bicubic to the target size (transformers' CLIP
    embeddings, as mmseg's ``resize_pos_embed`` does); "scale": the SCLIP code's
    ``interpolate_pos_encoding``, DINO's scale factor (n + 0.1) / M on the same table.
    """
    n = positional_embedding.shape[0] - 1
    m = int(math.sqrt(n))
    if (rows, cols) == (m, m):
        return positional_embedding
    dim = positional_embedding.shape[-1]
    grid = positional_embedding[1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if rule == "size":
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
    else:
        grid = F.interpolate(grid, scale_factor=((rows + 0.1) / m, (cols + 0.1) / m), mode="bicubic")
    return torch.cat([positional_embedding[:1], grid[0].flatten(1).transpose(0, 1)], dim=0)


def openai_encode_image(sd, images, patch, rule="size", return_all=False):
    """OpenAI VisionTransformer: images (B, 3, H, W) normalised -> (B, E), or with ``return_all``
    every token's ``ln_post(x) @ proj`` (B, 1 + N, E) as SCLIP's dense features."""
    x = F.conv2d(images, sd["visual.conv1.weight"], stride=patch).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    pos = clip_pos_embed(sd["visual.positional_embedding"], images.shape[2] // patch, images.shape[3] // patch, rule)
    x = torch.cat([cls, x], dim=1) + pos
    W = x.shape[-1]
    x = F.layer_norm(x, (W,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"], 1e-5)
    depth = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("visual.transformer.resblocks."))
    for i in range(depth):
        x = openai_block(x, sd, f"visual.transformer.resblocks.{i}.", W // 64)
    x = x if return_all else x[:, 0]
    x = F.layer_norm(x, (W,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"], 1e-5)
    return x @ sd["visual.proj"]


def openai_encode_text(sd, ids):
    """OpenAI text transformer: token ids (T, L) -> (T, E), pooled at the highest token id."""
    L = ids.shape[1]
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:L]
    mask = torch.full((L, L), float("-inf")).triu(1)
    W = x.shape[-1]
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks."))
    for i in range(depth):
        x = openai_block(x, sd, f"transformer.resblocks.{i}.", W // 64, mask)
    x = F.layer_norm(x, (W,), sd["ln_final.weight"], sd["ln_final.bias"], 1e-5)
    return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ sd["text_projection"]


def normalise(images, spec):
    return (images - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)


@pytest.mark.parametrize("name", VIT_MODELS)
def test_vit_official_matches_hf_folder_and_authors_forward(name, tmp_path):
    spec = get_spec(name)
    official = make_random_checkpoint(name, tmp_path, fmt="official")
    assert official.name == spec.official_file
    from_official = build_backbone(name, official)
    from_folder = build_backbone(name, tmp_path)
    native = 4 * spec.patch_size
    for size in [(native, native), (native - 3, native + 5)]:
        images = torch.rand(2, 3, *size)
        with torch.no_grad():
            a = from_official.features(images, layers=(0, -1))
            b = from_folder.features(images, layers=(0, -1))
        for x, y in zip(a.maps + a.cls, b.maps + b.cls, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    sd = read_checkpoint(official)
    images = torch.rand(2, 3, native, native)
    with torch.no_grad():
        tokens, keys = authors_vit_forward(sd, normalise(images, spec), spec, heads=2)
        out = from_official.features(images)
        k = from_official.features(images, kind="keys")
    skip = 1 + spec.registers
    grid = tokens[:, skip:].transpose(1, 2).reshape(2, -1, 4, 4)
    torch.testing.assert_close(out.cls[0], tokens[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.maps[0], grid, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(k.maps[0], keys[:, skip:].transpose(1, 2).reshape(2, -1, 4, 4), rtol=1e-4, atol=1e-5)


# Patch grids off the native 4 x 4 of the tiny models: one larger and one smaller, both non-square.
OFF_NATIVE = [(6, 7), (3, 2)]


@pytest.mark.parametrize("name", VIT_MODELS)
def test_vit_off_native_sizes_match_authors_interpolation(name, tmp_path):
    spec = get_spec(name)
    official = make_random_checkpoint(name, tmp_path, fmt="official")
    encoder = build_backbone(name, official)
    assert encoder.pos_interpolation == "authors"
    sd = read_checkpoint(official)
    skip = 1 + spec.registers
    for rows, cols in OFF_NATIVE:
        images = torch.rand(2, 3, rows * spec.patch_size, cols * spec.patch_size)
        with torch.no_grad():
            tokens, keys = authors_vit_forward(sd, normalise(images, spec), spec, heads=2)
            out = encoder.features(images)
            k = encoder.features(images, kind="keys")
        assert out.maps[0].shape == (2, 128, rows, cols)
        torch.testing.assert_close(out.cls[0], tokens[:, 0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.maps[0], tokens[:, skip:].transpose(1, 2).reshape(2, -1, rows, cols),
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(k.maps[0], keys[:, skip:].transpose(1, 2).reshape(2, -1, rows, cols),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("name", "option", "rule"), [("clip_vitb16", None, "size"), ("clip_vitb32", None, "size"),
                                                      ("clip_vitb16", "dino", "scale")])
def test_clip_off_native_sizes_match_independent_interpolation(name, option, rule, tmp_path):
    spec = get_spec(name)
    official = make_random_checkpoint(name, tmp_path, fmt="official")
    encoder = build_backbone(name, official, pos_interpolation=option)
    assert encoder.pos_interpolation == (option or "hf")
    sd = {k: v for k, v in read_checkpoint(official).items() if v.is_floating_point()}
    for rows, cols in OFF_NATIVE:
        images = torch.rand(2, 3, rows * spec.patch_size, cols * spec.patch_size)
        with torch.no_grad():
            dense = openai_encode_image(sd, normalise(images, spec), spec.patch_size, rule, return_all=True)
            out = encoder.features(images)
            maps = encoder.project_tokens(out.maps[0], apply_norm=False)
            torch.testing.assert_close(encoder.image_embedding(images), dense[:, 0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(maps, dense[:, 1:].transpose(1, 2).reshape(2, -1, rows, cols),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["dino_vits8", "dinov2_vits14", "dinov2_vits14_reg", "clip_vitb16"])
def test_hf_option_is_transformers_forward(name, tmp_path):
    """``pos_interpolation="hf"`` gives exactly what the transformers model computes itself (loaded
    on its own from the same folder); at the native grid every option gives the same features."""
    import transformers as tf

    spec = get_spec(name)
    folder = make_random_checkpoint(name, tmp_path)
    hf = build_backbone(name, folder, pos_interpolation="hf")
    default = build_backbone(name, folder)
    if spec.family == "clip":
        ref = tf.CLIPModel.from_pretrained(folder).eval().vision_model
    elif spec.family == "dino":
        ref = tf.ViTModel.from_pretrained(folder, add_pooling_layer=False).eval()
    else:
        ref = tf.AutoModel.from_pretrained(folder).eval()
    skip = 1 + spec.registers
    for rows, cols in OFF_NATIVE:
        images = torch.rand(2, 3, rows * spec.patch_size, cols * spec.patch_size)
        with torch.no_grad():
            pixels = hf.prepare(images)
            if spec.family == "dinov2":
                expect = ref(pixels).last_hidden_state
            else:
                expect = ref(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
            got = hf.features(images, final_norm=spec.family != "clip")
        torch.testing.assert_close(got.cls[0], expect[:, 0], rtol=0, atol=0)
        torch.testing.assert_close(got.maps[0], expect[:, skip:].transpose(1, 2).reshape(2, -1, rows, cols),
                                   rtol=0, atol=0)
    images = torch.rand(2, 3, 4 * spec.patch_size, 4 * spec.patch_size)
    with torch.no_grad():
        a, b, c = (e.features(images, layers=(0, -1)) for e in (hf, default, build_backbone(name, folder,
                                                                                         pos_interpolation="dino")))
    for x, y, z in zip(a.maps + a.cls, b.maps + b.cls, c.maps + c.cls, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
        torch.testing.assert_close(x, z, rtol=0, atol=0)


def test_pos_interpolation_choices(tmp_path):
    folder = make_random_checkpoint("dino_vits16", tmp_path)
    with pytest.raises(ConfigError, match="pos_interpolation must be one of authors, hf, dino"):
        build_backbone("dino_vits16", folder, pos_interpolation="bilinear")
    with pytest.raises(ConfigError, match="no 'authors' rule"):
        build_backbone("clip_vitb16", "random", pos_interpolation="authors")
    with pytest.raises(ConfigError, match="image encoders only"):
        build_backbone("minilm_l6", "random", pos_interpolation="hf")
    encoder = build_backbone("dino_vits16", folder)
    assert (encoder.pos_interpolation, encoder.pos_rule) == ("authors", "dino")
    images = torch.rand(1, 3, 80, 48)
    with torch.no_grad():
        authors = encoder.features(images).maps[0]
        encoder.pos_interpolation = "hf"
        assert encoder.pos_rule == "hf"
        hf = encoder.features(images).maps[0]
    assert (authors - hf).abs().max() > 1e-3
    assert [get_spec(n).pos_rule for n in ("dino_vitb8", "dinov2_vitl14", "dinov2_vitl14_reg", "clip_vitl14")] == [
        "dino", "dinov2", "dinov2_reg", ""]


def test_architecture_read_from_shapes(tmp_path):
    path = make_random_checkpoint("dinov2_vitg14_reg", tmp_path, fmt="official", num_hidden_layers=3)
    encoder = build_backbone("dinov2_vitg14_reg", path)
    cfg = encoder.model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (128, 3, 2)
    assert cfg.use_swiglu_ffn and cfg.num_register_tokens == 4 and cfg.image_size == 56
    with pytest.raises(ValueError, match="register"):
        build_backbone("dinov2_vitg14", path)


def test_dino_full_checkpoint_and_safetensors_variants(tmp_path):
    official = make_random_checkpoint("dino_vits16", tmp_path, fmt="official")
    sd = torch.load(official, weights_only=True)
    full = {"teacher": {**{f"backbone.{k}": v for k, v in sd.items()}, "head.mlp.0.weight": torch.zeros(3, 3)},
            "student": {f"module.backbone.{k}": v + 1 for k, v in sd.items()}, "epoch": 100}
    torch.save(full, tmp_path / "dino_full_checkpoint.pth")
    hub_file = tmp_path / "hub_keys.safetensors"
    save_file(load_file(str(tmp_path / "model.safetensors")), str(hub_file))
    authors_st = make_random_checkpoint("dino_vits16", tmp_path / "st", fmt="official_safetensors")
    images = torch.rand(1, 3, 50, 70)
    with torch.no_grad():
        expect = build_backbone("dino_vits16", official).features(images).maps[0]
        for path in (tmp_path / "dino_full_checkpoint.pth", hub_file, authors_st):
            got = build_backbone("dino_vits16", path).features(images).maps[0]
            torch.testing.assert_close(got, expect, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["clip_vitb16", "clip_vitb32"])
def test_clip_openai_torchscript_matches_folder_and_authors_forward(name, tmp_path):
    spec = get_spec(name)
    official = make_random_checkpoint(name, tmp_path, fmt="official")
    assert official.name == spec.official_file
    from_official = build_backbone(name, official)
    from_folder = build_backbone(name, tmp_path)
    images = torch.rand(2, 3, 4 * spec.patch_size, 4 * spec.patch_size)
    texts = ["a photo of a cat", "a tree near the water"]
    sd = {k: v for k, v in read_checkpoint(official).items() if v.is_floating_point()}
    ids = from_official.tokenize(texts)["input_ids"]
    with torch.no_grad():
        for a, b in [(from_official.features(images, layers=(0, 1), kind="values"),
                      from_folder.features(images, layers=(0, 1), kind="values"))]:
            for x, y in zip(a.maps + a.cls, b.maps + b.cls, strict=True):
                torch.testing.assert_close(x, y, rtol=0, atol=0)
        torch.testing.assert_close(from_official.encode_text(texts), from_folder.encode_text(texts), rtol=0, atol=0)
        image_expect = openai_encode_image(sd, normalise(images, spec), spec.patch_size)
        torch.testing.assert_close(from_official.image_embedding(images), image_expect, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(from_official.encode_text(ids), openai_encode_text(sd, ids), rtol=1e-4, atol=1e-5)


def test_clip_plain_fp16_state_dict(tmp_path):
    official = make_random_checkpoint("clip_vitb16", tmp_path, fmt="official")
    sd = {k: v.half() if v.is_floating_point() else v for k, v in read_checkpoint(official).items()}
    torch.save(sd, tmp_path / "plain.pt")
    encoder = build_backbone("clip_vitb16", tmp_path / "plain.pt")
    assert all(p.dtype == torch.float32 for p in encoder.parameters())
    assert encoder.tokenizer is not None  # picked up from the checkpoint's folder
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        got = encoder.image_embedding(images)
        fp32 = {k: v.float() for k, v in sd.items()}
        expect = openai_encode_image(fp32, normalise(images, get_spec("clip_vitb16")), 16)
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["dino_vits8", "dinov2_vitg14_reg", "clip_vitb16"])
def test_key_tables_round_trip(name, tmp_path):
    family = get_spec(name).family
    hub = load_file(str(make_random_checkpoint(name, tmp_path) / "model.safetensors"))
    official = from_hub(hub, family)
    assert not any(k.startswith(("encoder.", "vision_model.", "embeddings.")) for k in official)
    back = to_hub(official, family)
    assert back.keys() == hub.keys()
    for key in hub:
        assert torch.equal(back[key], hub[key]), key
