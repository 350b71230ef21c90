import pytest
import torch

from leafseg.heads import DPT_SIZES, DPTHead, build_dpt_segmenter, default_head_dims, default_tapped_blocks

TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, patch_size=8, image_size=32)


pytestmark = pytest.mark.usefixtures("one_thread")


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_head_output_is_eight_times_the_patch_grid():
    head = DPTHead(32, 5, features=8, out_channels=(4, 8, 16, 32))
    maps = [torch.randn(2, 32, 3, 4) for _ in range(4)]
    assert head(maps).shape == (2, 5, 24, 32)
    with pytest.raises(ValueError):
        head(maps[:3])


def test_published_head_sizes_and_parameter_counts():
    features, out_channels = DPT_SIZES["s"]
    assert (features, out_channels) == (64, (48, 96, 192, 384))
    assert abs(count(DPTHead(384, 21, features, out_channels)) - 2.67e6) < 0.02e6  # paper: 2.7M
    assert abs(count(DPTHead(768, 21, *DPT_SIZES["b"])) - 10.65e6) < 0.05e6  # 97.5M - 86.6M - unused unit
    assert default_head_dims("dinov2_vitl14", 1024) == DPT_SIZES["l"]
    assert default_head_dims("dinov2_vits14", 96) == (16, (12, 24, 48, 96))  # custom width: scaled


def test_published_tapped_blocks():
    assert default_tapped_blocks("dinov2_vits14", 12) == (2, 5, 8, 11)
    assert default_tapped_blocks("dinov2_vitb14", 12) == (2, 5, 8, 11)
    assert default_tapped_blocks("dinov2_vitl14", 24) == (4, 11, 17, 23)
    assert default_tapped_blocks("dinov2_vitg14", 40) == (9, 19, 29, 39)
    assert default_tapped_blocks("dinov2_vits14", 4) == (0, 1, 2, 3)


def test_vit_s_segmenter_matches_the_published_size():
    torch.manual_seed(0)
    model = build_dpt_segmenter("dinov2_vits14", 21, weights="random")
    assert model.layers == (2, 5, 8, 11)
    assert abs(count(model.encoder) - 22.06e6) < 0.05e6
    assert abs(count(model) - 24.72e6) < 0.05e6  # 24.8M with the unused unit
    out = model(torch.rand(1, 3, 28, 42))
    assert out.shape == (1, 21, 28, 42)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_dpt_segmenter("dinov2_vits14", 3, weights="random", arch_overrides=TINY, layers=(0, 1, 2, 3)).eval()


def test_final_layernorm_is_applied_to_every_tapped_block(tiny):
    x = torch.rand(2, 3, 32, 40)  # a 4 x 5 grid: the transformers reference resamples positions its own way
    tiny.encoder.pos_interpolation = "hf"
    try:
        maps = tiny.tapped(x)
    finally:
        tiny.encoder.pos_interpolation = None
    pixels = tiny.encoder.prepare(x)
    hidden = tiny.encoder.model(pixels, output_hidden_states=True).hidden_states
    for level, block in enumerate(tiny.layers):
        tokens = tiny.encoder.model.layernorm(hidden[block + 1])[:, 1:]
        expected = tokens.transpose(1, 2).reshape(2, 32, 4, 5)
        torch.testing.assert_close(maps[level], expected)


def test_channel_scale_reaches_every_level(tiny):
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(tiny(x, channel_scale=torch.ones(3, 32)), tiny(x))
    zeroed = tiny(x, channel_scale=torch.zeros(3, 32))  # no channel left: output independent of the image
    torch.testing.assert_close(zeroed[0], zeroed[1])
    torch.testing.assert_close(zeroed[0], zeroed[2])
    assert not torch.allclose(tiny(x)[0], tiny(x)[1])


def test_unused_encoder_parameters_are_frozen():
    model = build_dpt_segmenter("dinov2_vits14", 3, weights="random", arch_overrides=TINY, layers=(0, 1, 1, 2))
    frozen = {n for n, p in model.encoder.named_parameters() if not p.requires_grad}
    assert any("mask_token" in n for n in frozen)
    assert all(".3." in n or "mask_token" in n for n in frozen) and any(".3." in n for n in frozen)
    loss = model(torch.rand(1, 3, 16, 16)).sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_dpt_head_with_a_stem():
    from leafseg.heads import build_dpt_segmenter

    torch.manual_seed(0)
    arch = {"patch_size": 8, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
            "intermediate_size": 64}
    model = build_dpt_segmenter("dino_vits8", 5, weights="random", arch_overrides=arch, layers=(0, 1, 2, 3),
                                features=16, out_channels=(8, 8, 16, 16), stem_channels=8)
    out = model(torch.rand(2, 3, 48, 40))
    assert out.shape == (2, 5, 48, 40)
    out.sum().backward()
    assert model.head.stem[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="pixels"):
        model.head(model.tapped(torch.rand(1, 3, 48, 40)))
