"""MaskFormer without class head: output shapes, paper sizes, pyramid strides, semantic combination."""

from __future__ import annotations

import pytest
import torch

from leafseg.heads.maskformer import (
    PixelDecoder,
    QueryDecoder,
    build_maskformer,
    default_layers,
    semantic_inference,
    sine_position,
)

TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64}


def _tiny(patch: int = 8, **kw):
    torch.manual_seed(0)
    return build_maskformer("dino_vits8", weights="random", arch_overrides={**TINY_VIT, "patch_size": patch},
                            **{"num_queries": 10, "hidden_dim": 32, "dec_layers": 3, "heads": 4, "ffn_dim": 64,
                               "mask_dim": 24, "conv_dim": 16, **kw})


def test_output_shapes():
    model = _tiny()
    out = model(torch.rand(2, 3, 64, 96))
    assert out["masks"].shape == (2, 10, 16, 24)  # stride 4
    assert out["features"].shape == (2, 10, 32)  # raw mask features (hidden_dim)
    assert out["mask_embeddings"].shape == (2, 10, 24)  # mask_dim
    assert len(out["aux"]) == 2 and out["aux"][0]["masks"].shape == (2, 10, 16, 24)
    assert "logits" not in out and not any("class" in name for name, _ in model.named_modules())
    # masks are the dot products of mask embeddings with the per-pixel embeddings
    maps = model.backbone(torch.rand(1, 3, 32, 32))
    mask_features, _ = model.pixel_decoder(maps)
    out = model.decode(maps)
    assert torch.allclose(out["masks"], torch.einsum("bnc,bchw->bnhw", out["mask_embeddings"], mask_features),
                          atol=1e-5)


@pytest.mark.parametrize("patch,size,strides,expected", [
    (8, 64, (4, 8, 16, 32), [16, 8, 4, 2]),
    (16, 64, (4, 8, 16, 32), [16, 8, 4, 2]),
    (4, 64, (2, 4, 8, 16), [32, 16, 8, 4]),
    (14, 56, (4, 8, 16, 32), [14, 7, 4, 2]),  # non-power-of-two ratios are interpolated
])
def test_pyramid_strides(patch, size, strides, expected):
    model = _tiny(patch, strides=strides)
    maps = model.backbone(torch.rand(1, 3, size, size))
    assert [m.shape[-1] for m in maps] == expected
    assert all(m.shape[1] == 16 for m in maps)


def test_paper_sizes_are_the_defaults():
    decoder = QueryDecoder(256)
    assert decoder.num_queries == 64 and len(decoder.layers) == 6
    assert decoder.query_embed.weight.shape == (64, 256)
    assert decoder.mask_embed.layers[-1].out_features == 256
    assert PixelDecoder([256] * 4).mask_features.out_channels == 256


def test_gradients_reach_backbone_and_queries():
    model = _tiny()
    out = model(torch.rand(2, 3, 32, 32))
    (out["masks"].sigmoid().mean() + out["features"].pow(2).mean()).backward()
    assert model.decoder.query_embed.weight.grad.abs().sum() > 0
    assert model.backbone.encoder.blocks[0].attention.q_proj.weight.grad.abs().sum() > 0


def test_semantic_inference_sums_over_queries():
    masks = torch.tensor([[[[10.0, -10.0]], [[-10.0, 10.0]], [[0.0, 0.0]]]])  # (1, 3 queries, 1, 2)
    probs = torch.tensor([[[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]])  # (1, 3, 2 classes)
    out = semantic_inference(masks, probs)
    assert out.shape == (1, 2, 1, 2)
    # pixel 0: query 0 (mask 1) + query 2 (mask 0.5); pixel 1: query 1 + query 2
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.9 + 0.25, 0.1 + 0.25]), atol=1e-3)
    assert torch.allclose(out[0, :, 0, 1], torch.tensor([0.2 + 0.25, 0.8 + 0.25]), atol=1e-3)


def test_helpers():
    assert default_layers(12) == (2, 5, 8, 11) and default_layers(2) == (0, 1, 1, 1)
    pos = sine_position(torch.zeros(1, 8, 3, 5))
    assert pos.shape == (1, 8, 3, 5) and pos.abs().max() <= 1
    with pytest.raises(ValueError, match="divisible by 4"):
        sine_position(torch.zeros(1, 6, 2, 2))


def test_masked_attention_option():
    model = _tiny(masked_attention=True)
    out = model(torch.rand(2, 3, 32, 32))
    assert out["masks"].shape == (2, 10, 8, 8) and model.decoder.query_feat is not None
    masks = torch.full((1, 2, 4, 4), -5.0)
    masks[0, 0, :2, :2] = 5.0  # query 0: top-left quarter; query 1: empty -> attends everywhere
    allowed = QueryDecoder._attention_mask(masks, (2, 2))
    assert allowed.shape == (1, 1, 2, 4)
    assert allowed[0, 0, 0].tolist() == [True, False, False, False] and bool(allowed[0, 0, 1].all())


def test_mask_pooling_option():
    torch.manual_seed(0)
    plain = QueryDecoder(16, num_queries=3, hidden_dim=8, num_layers=1, heads=2, ffn_dim=16, mask_dim=4)
    pooled = QueryDecoder(16, num_queries=3, hidden_dim=8, num_layers=1, heads=2, ffn_dim=16, mask_dim=4,
                          mask_pooling=True)
    assert plain.pool_proj is None and pooled.pool_proj.in_features == 4
    pooled.load_state_dict(plain.state_dict(), strict=False)
    memory, pixels = torch.rand(2, 16, 2, 2), torch.rand(2, 4, 6, 6, requires_grad=True)
    base, out = plain(memory, pixels)[-1], pooled(memory, pixels)[-1]
    assert torch.allclose(base["masks"], out["masks"]) and not torch.allclose(base["features"], out["features"])
    # each query adds a linear map of the pixel embeddings averaged with its own sigmoid mask as weights
    w = out["masks"].detach().sigmoid()
    mean = torch.einsum("bnhw,bchw->bnc", w, pixels) / w.sum((2, 3))[..., None]
    assert torch.allclose(out["features"], base["features"] + pooled.pool_proj(mean), atol=1e-5)
    # the pooling weights are not trained through the features: only the pixel embeddings are
    out["features"].sum().backward()
    assert pixels.grad.abs().sum() > 0 and pooled.mask_embed.layers[0].weight.grad is None


def test_mask_pooling_only_uses_the_pooled_pixels_alone():
    torch.manual_seed(0)
    pooled = QueryDecoder(16, num_queries=3, hidden_dim=8, num_layers=1, heads=2, ffn_dim=16, mask_dim=4,
                          mask_pooling="only")
    memory, pixels = torch.rand(2, 16, 2, 2), torch.rand(2, 4, 6, 6)
    out = pooled(memory, pixels)[-1]
    w = out["masks"].detach().sigmoid()
    mean = torch.einsum("bnhw,bchw->bnc", w, pixels) / w.sum((2, 3))[..., None]
    assert torch.allclose(out["features"], pooled.pool_proj(mean), atol=1e-5)
    assert QueryDecoder(16, num_queries=3, hidden_dim=8, num_layers=1, heads=2, ffn_dim=16,
                        mask_pooling=False).mask_pooling == "off"
    with pytest.raises(ValueError, match="mask_pooling"):
        QueryDecoder(16, num_queries=3, hidden_dim=8, num_layers=1, heads=2, ffn_dim=16, mask_pooling="mean")


def test_stem_adds_local_features_at_stride_4():
    plain, stem = _tiny(stem_channels=8), _tiny(stem_channels=8)
    stem.backbone.stem_proj[0].weight.data.normal_()  # the GroupNorm ends near zero at init: make it count
    plain.backbone.stem = plain.backbone.stem_proj = None
    images = torch.rand(1, 3, 64, 64)
    levels, base = stem.backbone(images), plain.backbone(images)
    assert [m.shape for m in levels] == [m.shape for m in base]
    assert not torch.allclose(levels[0], base[0])
    assert all(torch.equal(a, b) for a, b in zip(levels[1:], base[1:], strict=True))
    # the stem's convolutions are local (receptive field 15 px; GroupNorm's per-image statistics aside):
    # pixels changed in one corner leave its stride-4 map unchanged far away
    other = images.clone()
    other[..., :4, :4] = 1 - other[..., :4, :4]
    convs = torch.nn.Sequential(*[m for m in stem.backbone.stem if isinstance(m, torch.nn.Conv2d)])
    a, b = convs(images), convs(other)
    assert stem.backbone.stem(images).shape == a.shape == (1, 8, 16, 16)
    assert not torch.allclose(a[..., :2, :2], b[..., :2, :2]) and torch.equal(a[..., 6:, 6:], b[..., 6:, 6:])
    stem(torch.rand(2, 3, 60, 60))["masks"].sum().backward()  # padded input: the stem map is zero-padded
    assert stem.backbone.stem[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="stride-4"):
        _tiny(stem_channels=8, strides=(8, 16, 32, 64))
