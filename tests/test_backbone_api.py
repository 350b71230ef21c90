"""The public encoder API that heads, grouping and evaluation methods build on: ``mean``/``std`` and
``normalize``, ``tokens_before_last_block``, and CLIP's ``value_branch`` / ``mlp_branch``."""

from __future__ import annotations

import pytest
import torch

from leafseg.backbones import build_backbone, get_spec, make_random_checkpoint
from tiny_clip import TINY_CLIP

IMAGE_MODELS = ["dino_vits8", "dinov2_vits14_reg", "clip_vitb16"]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """name -> tiny random encoder (2 blocks) loaded from a Hugging Face folder."""
    return {name: build_backbone(name, weights=make_random_checkpoint(name, tmp_path_factory.mktemp(name)))
            for name in IMAGE_MODELS}


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_normalize_uses_the_registry_constants(encoders, name):
    encoder, spec = encoders[name], get_spec(name)
    assert encoder.mean == tuple(spec.mean) and encoder.std == tuple(spec.std)
    images = torch.rand(2, 3, 5, 7)
    expected = (images - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    out = encoder.normalize(images)
    assert out.shape == images.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        encoder.normalize(torch.rand(2, 1, 5, 7))


def test_features_normalise_exactly_like_normalize(encoders):
    encoder = encoders["dino_vits8"]
    images = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        inside = encoder.features(images).maps[0]
        outside = encoder.features(encoder.normalize(images), normalize_input=False).maps[0]
    assert torch.equal(inside, outside)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_the_last_block_on_its_input_gives_the_last_features(encoders, name):
    encoder = encoders[name]
    images = torch.rand(2, 3, 30, 44)  # not multiples of the patch: padded like features()
    p, skip = encoder.patch_size, 1 + encoder.num_registers
    with torch.no_grad():
        tokens, (h, w) = encoder.tokens_before_last_block(images)
        assert (h, w) == (-(-30 // p), -(-44 // p))
        assert tokens.shape == (2, skip + h * w, encoder.embed_dim)
        before = encoder.features(images, layers=(-2,)).maps[0]  # block num_blocks - 2: no final norm
        torch.testing.assert_close(tokens[:, skip:].transpose(1, 2).reshape(2, -1, h, w), before, rtol=0, atol=0)
        out = encoder.blocks[-1](tokens, None)
        out = out[0] if isinstance(out, tuple) else out
        last = encoder.features(images, layers=(-1,), final_norm=False)
    torch.testing.assert_close(out[:, skip:].transpose(1, 2).reshape(2, -1, h, w), last.maps[0])
    torch.testing.assert_close(out[:, 0], last.cls[0])


def test_tokens_before_the_only_block_are_the_embeddings():
    small = TINY_CLIP
    clip = build_backbone("clip_vitb16", "random", arch_overrides=small)
    images = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        tokens, grid = clip.tokens_before_last_block(images)
        vision = clip.model.vision_model
        expected = vision.pre_layrnorm(vision.embeddings(clip.prepare(images), interpolate_pos_encoding=True))
    assert grid == (2, 3) and tokens.shape == (1, 1 + 6, 64)
    torch.testing.assert_close(tokens, expected, rtol=0, atol=0)


def test_clip_branches_rebuild_the_block_for_a_lone_token(encoders):
    """With one token per sequence attention is attention to itself, so the block is
    ``h = x + value_branch(x); h + mlp_branch(h)``."""
    clip = encoders["clip_vitb16"]
    x = torch.randn(5, 1, clip.embed_dim)
    with torch.no_grad():
        for block in (0, -1):
            h = x + clip.value_branch(x, block=block)
            rebuilt = h + clip.mlp_branch(h, block=block)
            out = clip.blocks[block](x, None)
            out = out[0] if isinstance(out, tuple) else out
            torch.testing.assert_close(rebuilt, out, rtol=1e-5, atol=1e-5)
        assert clip.value_branch(torch.randn(2, 7, clip.embed_dim)).shape == (2, 7, clip.embed_dim)
    with pytest.raises(IndexError, match="out of range"):
        clip.mlp_branch(x, block=clip.num_blocks)
