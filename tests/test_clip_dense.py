"""The one last-block hook of dense CLIP: the hook against CLIP's own block, and MaskCLIP over it."""

import pytest
import torch
import torch.nn.functional as F

from leafseg.backbones import build_backbone, last_block, make_random_checkpoint
from leafseg.backbones.clip_dense import block_heads
from leafseg.errors import ConfigError
from leafseg.eval.clip_methods import MaskClip
from leafseg.eval.methods import build_method
from tiny_clip import TWO_HEADS

HEADS, GRID = 2, (2, 3)  # 32 x 48 images on 16-pixel patches


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return build_backbone("clip_vitb16", "random", arch_overrides=TWO_HEADS)


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    return make_random_checkpoint("dino_vits8", tmp_path_factory.mktemp("dino"))


# -- helpers -------------------------------------------------------------------------------
def heads_of(clip, images):
    tokens, grid = clip.tokens_before_last_block(images)
    return block_heads(clip, tokens, grid)


# -- the hook --------------------------------------------------------------------------------
@torch.no_grad()
def test_the_hook_with_clip_attention_is_clips_last_block(clip, images):
    tokens, grid = clip.tokens_before_last_block(images)

    def clip_attention(heads):
        return torch.softmax(heads.scale * heads.q @ heads.k.transpose(-1, -2), dim=-1)  # (B, H, T, T)

    out, out_grid = last_block(clip, tokens, grid, clip_attention, residual=True, ffn=True)
    block = clip.blocks[-1](tokens, None)
    block = block[0] if isinstance(block, tuple) else block
    assert out_grid == GRID and out.shape == (2, 6, 64)
    torch.testing.assert_close(out, block[:, 1:], atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_identity_attention_is_the_value_branch_and_maskclip_is_unchanged(clip, images):
    tokens, grid = clip.tokens_before_last_block(images)
    method = MaskClip(clip)
    weights = method.attention(heads_of(clip, images))
    assert torch.equal(weights[0, 0], torch.eye(6))
    for residual, ffn in ((True, True), (False, False)):
        fast, _ = last_block(clip, tokens, grid, None, residual=residual, ffn=ffn)
        explicit, _ = last_block(clip, tokens, grid, method.attention, residual=residual, ffn=ffn)
        torch.testing.assert_close(explicit, fast, atol=1e-6, rtol=1e-5)
    # MaskCLIP's embeddings are bit for bit the value-branch formula it used before the hook existed
    x = tokens[:, 1:]
    v = clip.value_branch(x, block=-1) + x
    v = v + clip.mlp_branch(v, block=-1)
    emb = F.normalize(clip.project_tokens(v, apply_norm=True).float(), dim=-1)
    assert torch.equal(method.dense_embeddings(images), emb.transpose(1, 2).reshape(2, -1, *GRID))


@torch.no_grad()
def test_weights_over_the_patches_mix_the_patch_values(clip, images):
    tokens, grid = clip.tokens_before_last_block(images)
    out, _ = last_block(clip, tokens, grid, lambda heads: torch.full((1, 1, 6, 6), 1 / 6), residual=False, ffn=False)
    layer = clip.blocks[-1]
    v = layer.self_attn.v_proj(layer.layer_norm1(tokens))[:, 1:]  # the CLS value takes no part
    expected = layer.self_attn.out_proj(v.mean(1, keepdim=True)).expand(-1, 6, -1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_the_hook_refuses_weights_that_fit_no_token_set(clip, images):
    tokens, grid = clip.tokens_before_last_block(images)
    with pytest.raises(ValueError, match="over 5 tokens"):
        last_block(clip, tokens, grid, lambda heads: torch.ones(2, 2, 6, 5))


# -- errors ---------------------------------------------------------------------------------
def test_a_non_clip_backbone_is_refused(dino_dir):
    with pytest.raises(ConfigError, match="maskclip needs a CLIP backbone .*'dino_vits8'"):
        build_method("maskclip", "dino_vits8", str(dino_dir))
