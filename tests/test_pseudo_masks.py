import pytest
import torch

from leafseg.eval import oracle_miou
from leafseg.grouping import PixelFeatures, PseudoMaskGenerator, upsample_labels


def quadrants(b=3, h=64, w=48):
    """Images of four flat coloured quadrants, and their quadrant index maps (B, H, W)."""
    g = torch.Generator().manual_seed(0)
    colours = torch.rand(b, 4, 3, generator=g)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    quad = ((ys >= h // 2).long() * 2 + (xs >= w // 2).long()).expand(b, h, w)
    images = colours.gather(1, quad.reshape(b, -1, 1).expand(-1, -1, 3)).reshape(b, h, w, 3)
    return images.permute(0, 3, 1, 2).contiguous(), quad


def test_pixel_kmeans_finds_flat_regions():
    images, quad = quadrants()
    gen = PseudoMaskGenerator(PixelFeatures(8), k=4, metric="euclidean")
    regions = gen(images)
    assert regions.shape == quad.shape and regions.dtype == torch.int64
    assert oracle_miou(regions, quad, 4) == pytest.approx(1.0)


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (15, 90)])
@pytest.mark.parametrize("upsample", ["bilinear", "nearest"])
def test_output_matches_any_input_size(size, upsample):
    images = torch.rand(2, 3, *size)
    gen = PseudoMaskGenerator(PixelFeatures(8), k=3, upsample=upsample)
    regions = gen(images)
    assert regions.shape == (2, *size)
    assert int(regions.min()) >= 0 and int(regions.max()) < 3


def test_feature_size_sets_the_token_grid():
    gen = PseudoMaskGenerator(PixelFeatures(8), k=2, feature_size=(32, 40))
    assert gen.regions(torch.rand(1, 3, 100, 70)).shape == (1, 4, 5)


def test_too_many_regions_for_the_grid_is_an_error():
    gen = PseudoMaskGenerator(PixelFeatures(8), k=20)
    with pytest.raises(ValueError, match="k=20"):
        gen(torch.rand(1, 3, 16, 16))


def test_upsample_nearest_is_exact_on_integer_factors():
    labels = torch.tensor([[[0, 1], [2, 3]]])
    out = upsample_labels(labels, (4, 4), 4, "nearest")
    assert torch.equal(out[0], labels[0].repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert torch.equal(upsample_labels(labels, (4, 4), 4, "bilinear"), out)
