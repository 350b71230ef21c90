"""RegionEncoder: CLIP region embeddings by context-aware masking, pixel masking and token dropping,
checked against slow per-region computations on a tiny random CLIP in float64."""

import math

import pytest
import torch
from torch import nn

from leafseg.backbones import build_backbone, make_random_checkpoint
from leafseg.backbones.clip_regions import RegionEncoder, region_grid
from leafseg.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

P = 16  # the tiny CLIP's patch size
BLOCKS = 3


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = make_random_checkpoint("clip_vitb16", tmp_path_factory.mktemp("clip"),
                                    vision_config={"num_hidden_layers": BLOCKS})
    return build_backbone("clip_vitb16", weights=folder).double()


def grid_masks(grid: torch.Tensor) -> torch.Tensor:
    """(B, M, h, w) bool patch-grid regions -> (B, M, h*P, w*P) float pixel masks."""
    return grid.double().repeat_interleave(P, 2).repeat_interleave(P, 3)


def example_regions() -> torch.Tensor:
    """(2, 4, 4, 4) bool: per image a partial region, its complement, an overlapping one, and an
    empty one (image 0) or a single patch (image 1)."""
    gen = torch.Generator().manual_seed(3)
    half = torch.rand(2, 4, 4, generator=gen) > 0.5
    half[:, 0, 0], half[:, 3, 3] = True, False
    grid = torch.zeros(2, 4, 4, 4, dtype=torch.bool)
    grid[:, 0], grid[:, 1] = half, ~half
    grid[:, 2, 1:3, :] = True
    grid[1, 3, 2, 1] = True
    return grid


def run_block(layer, h):
    out = layer(h, None)
    return out[0] if isinstance(out, tuple) else out


def block_inputs(clip, images):
    """The tokens (B, 1+N, C) entering each block of the plain image forward, plus the output."""
    h = clip._embed(clip.prepare(images))
    inputs = []
    for layer in clip.blocks:
        inputs.append(h)
        h = run_block(layer, h)
    return inputs + [h]


def slow_attend(layer, token, context):
    """One block for a single query token that attends to itself and the rows of ``context``
    (K, C), head by head with an explicit softmax -> (C,)."""
    attn = layer.self_attn
    heads, width = attn.num_heads, token.shape[0]
    d = width // heads
    seq = layer.layer_norm1(torch.cat([token[None], context]))
    q, k, v = attn.q_proj(seq[0]), attn.k_proj(seq), attn.v_proj(seq)
    out = []
    for i in range(heads):
        part = slice(i * d, (i + 1) * d)
        weights = torch.softmax(k[:, part] @ q[part] / math.sqrt(d), dim=0)
        out.append(weights @ v[:, part])
    x = token + attn.out_proj(torch.cat(out))
    return x + layer.mlp(layer.layer_norm2(x))


def slow_context(clip, images, grid, k):
    """Region m of image b: the class token copied at block L-k, then in each of the last k blocks
    attending to itself and the patches of region m of the plain image's tokens."""
    inputs = block_inputs(clip, images)
    b, m = grid.shape[:2]
    out = torch.empty(b, m, clip.proj_dim, dtype=torch.float64)
    for i in range(b):
        for j in range(m):
            token = inputs[BLOCKS - k][i, 0]
            for layer_index in range(BLOCKS - k, BLOCKS):
                patches = inputs[layer_index][i, 1:][grid[i, j].flatten()]
                token = slow_attend(clip.blocks[layer_index], token, patches)
            out[i, j] = clip.project_tokens(token[None])[0]
    return out


@pytest.mark.parametrize("k", [1, 2, 3])
def test_context_regions_equal_the_slow_per_region_attention(clip, k):
    images, grid = torch.rand(2, 3, 64, 64), example_regions()
    with torch.no_grad():
        fast = RegionEncoder(clip, masked_blocks=k)(images, grid_masks(grid))
        slow = slow_context(clip, images, grid, k)
    assert fast.shape == (2, 4, clip.proj_dim)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-11)


def test_masked_blocks_change_what_a_partial_region_sees(clip):
    images, grid = torch.rand(2, 3, 64, 64), example_regions()
    with torch.no_grad():
        last, every = (RegionEncoder(clip, masked_blocks=k)(images, grid_masks(grid)) for k in (1, "all"))
    assert (last[:, 0] - every[:, 0]).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["context", "drop", "pixels"])
@pytest.mark.parametrize("k", [1, "all"])
def test_a_whole_image_mask_gives_the_image_embedding(clip, mode, k):
    images = torch.rand(2, 3, 64, 48)
    masks = torch.ones(2, 3, 16, 12)  # low-resolution masks cover the image too
    masks[:, 2] = 0.7
    with torch.no_grad():
        regions = RegionEncoder(clip, masked_blocks=k, mode=mode)(images, masks)
        image = clip.image_embedding(images)
    torch.testing.assert_close(regions, image[:, None].expand(-1, 3, -1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3])
def test_drop_equals_encoding_only_the_kept_tokens(clip, k):
    images, grid = torch.rand(2, 3, 64, 64), example_regions()
    with torch.no_grad():
        fast = RegionEncoder(clip, masked_blocks=k, mode="drop")(images, grid_masks(grid))
        entry = block_inputs(clip, images)[BLOCKS - k]
        for i in range(2):
            for j in range(4):
                seq = torch.cat([entry[i, :1], entry[i, 1:][grid[i, j].flatten()]])[None]
                for layer in clip.blocks[BLOCKS - k:]:
                    seq = run_block(layer, seq)
                torch.testing.assert_close(fast[i, j], clip.project_tokens(seq[:, 0])[0], rtol=0, atol=1e-11)


def test_pixels_equals_encoding_each_masked_image_alone(clip):
    images = torch.rand(2, 3, 40, 56)  # padded to 48 x 64 inside the encoder
    masks = torch.rand(2, 3, 20, 28)
    mean = torch.tensor(clip.mean, dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        fast = RegionEncoder(clip, mode="pixels", chunk=4)(images, masks)
        inside = nn.functional.interpolate(masks, size=(40, 56), mode="bilinear", align_corners=False) >= 0.5
        for j in range(3):
            alone = torch.where(inside[:, j:j + 1], images.double(), mean)
            torch.testing.assert_close(fast[:, j], clip.image_embedding(alone), rtol=0, atol=1e-11)


def test_the_grid_is_a_bilinear_resize_and_a_threshold():
    grid = example_regions()
    pixels = grid_masks(grid)
    expected = grid.flatten(2)
    assert torch.equal(region_grid(pixels, (64, 64), P), expected)
    half = pixels[..., ::2, ::2]  # masks at half resolution still cover the image
    assert torch.equal(region_grid(half, (64, 64), P), expected)
    soft = torch.zeros(1, 1, 32, 32)
    soft[0, 0, :16, :16], soft[0, 0, 16:, 16:] = 0.5, 0.49
    assert region_grid(soft, (32, 32), P, threshold=0.5).tolist() == [[[True, False, False, False]]]
    assert region_grid(soft, (32, 32), P, threshold=0.4).tolist() == [[[True, False, False, True]]]


def test_the_grid_of_a_padded_image_and_of_empty_regions():
    full = torch.ones(1, 1, 40, 40)  # 40 px -> 3 x 3 patches of 16: last row/column half image, corner a quarter
    assert region_grid(full, (40, 40), P).view(3, 3).tolist() == [[True] * 3, [True] * 3, [True, True, False]]
    assert region_grid(full, (40, 40), P, threshold=0.6).view(3, 3)[:2, :2].all()
    assert region_grid(full, (40, 40), P, threshold=0.6).sum() == 4
    spots = torch.zeros(1, 3, 8, 8)  # masks on a grid twice as fine as the 4 x 4 patches
    spots[0, 0, 2, 5] = 1.0  # a quarter of patch (1, 2): kept as the region's peak
    spots[0, 1, 2, 3:5] = 1.0  # a quarter of patches (1, 1) and (1, 2): both peaks kept
    keep = region_grid(spots, (64, 64), P).view(3, 4, 4)
    assert keep[0].nonzero().tolist() == [[1, 2]]
    assert keep[1].nonzero().tolist() == [[1, 1], [1, 2]]
    assert not keep[2].any()


def test_the_threshold_is_configurable(clip):
    images = torch.rand(1, 3, 32, 32)
    soft = torch.zeros(1, 1, 32, 32)
    soft[0, 0, :16] = 0.6
    soft[0, 0, 16:, :16] = 0.3
    with torch.no_grad():
        high, low = (RegionEncoder(clip, threshold=t)(images, soft) for t in (0.5, 0.25))
        slow_high = slow_context(clip, images, torch.tensor([[[[1, 1], [0, 0]]]]).bool(), 1)
        slow_low = slow_context(clip, images, torch.tensor([[[[1, 1], [1, 0]]]]).bool(), 1)
    torch.testing.assert_close(high, slow_high, rtol=0, atol=1e-11)
    torch.testing.assert_close(low, slow_low, rtol=0, atol=1e-11)


@pytest.mark.parametrize("mode", ["context", "drop", "pixels"])
def test_learnable_region_tokens_start_as_the_class_token_and_take_the_gradients(clip, mode):
    images, masks = torch.rand(2, 3, 64, 64), grid_masks(example_regions())
    regions = RegionEncoder(clip, masked_blocks=2, mode=mode)
    tokens = nn.Parameter(regions.initial_region_tokens(4))
    with torch.no_grad():
        plain = regions(images, masks)
    learned = regions(images, masks, region_tokens=tokens)
    torch.testing.assert_close(learned.detach(), plain, rtol=0, atol=1e-11)
    learned.pow(2).sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum(1).min() > 0
    assert all(not p.requires_grad and p.grad is None for p in clip.parameters())
    with torch.no_grad():
        moved = regions(images, masks, region_tokens=tokens - 0.5 * tokens.grad)
    assert (moved - plain).abs().max() > 1e-4


def test_learnable_tokens_attend_to_the_whole_image_before_the_masked_blocks(clip):
    """With all-different tokens, the unmasked blocks are those of a class token of that value."""
    images, grid = torch.rand(1, 3, 32, 32), torch.tensor([[[[1, 0], [0, 0]]]]).bool()
    value = torch.randn(1, clip.embed_dim, dtype=torch.float64)
    encoder = RegionEncoder(clip, masked_blocks=1)
    with torch.no_grad():
        fast = encoder(images, grid_masks(grid), region_tokens=value)
        inputs = block_inputs(clip, images)
        token = encoder._embed_region_tokens(value)[0]
        for i in range(BLOCKS):
            patches = inputs[i][0, 1:] if i < BLOCKS - 1 else inputs[i][0, 1:2]
            token = slow_attend(clip.blocks[i], token, patches)
        slow = clip.project_tokens(token[None])[0]
    torch.testing.assert_close(fast[0, 0], slow, rtol=0, atol=1e-11)


def test_unit_norm_on_request(clip):
    out = RegionEncoder(clip, normalize=True)(torch.rand(1, 3, 32, 32), torch.rand(1, 5, 32, 32)).detach()
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(1, 5, dtype=out.dtype))


def test_bad_settings_and_shapes_are_config_errors(clip):
    bad = [({"mode": "crop"}, "region mode"), ({"masked_blocks": 0}, "masked_blocks"),
           ({"masked_blocks": BLOCKS + 1}, "masked_blocks"), ({"masked_blocks": "last"}, "masked_blocks"),
           ({"threshold": 0.0}, "threshold"), ({"threshold": 1.5}, "threshold"), ({"chunk": 0}, "chunk")]
    for kwargs, words in bad:
        with pytest.raises(ConfigError, match=words):
            RegionEncoder(clip, **kwargs)
    with pytest.raises(ConfigError, match="CLIP encoder"):
        RegionEncoder(nn.Identity())
    encoder, images = RegionEncoder(clip), torch.rand(2, 3, 32, 32)
    for masks in (torch.ones(2, 32, 32), torch.ones(1, 3, 32, 32), torch.ones(2, 0, 32, 32)):
        with pytest.raises(ConfigError, match="masks must have shape"):
            encoder(images, masks)
    with pytest.raises(ConfigError, match="images must have shape"):
        encoder(torch.rand(2, 32, 32), torch.ones(2, 3, 32, 32))
    with pytest.raises(ConfigError, match=r"region_tokens must have shape \(M, C\) = \(3, 128\)"):
        encoder(images, torch.ones(2, 3, 32, 32), region_tokens=torch.zeros(3, 64))
