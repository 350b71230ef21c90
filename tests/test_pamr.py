import pytest
import torch
import torch.nn.functional as F

from leafseg.eval.pamr import PAMR, pamr, pamr_affinity


def _stencil(x, d, include_centre):
    """Reference: neighbours of every pixel via a dilated 3x3 one-hot convolution on a replicate-padded
    input, as in the authors' module. x (B, K, H, W) -> (B, K, P, H, W)."""
    b, k, h, w = x.shape
    positions = [(i, j) for i in range(3) for j in range(3) if include_centre or (i, j) != (1, 1)]
    weight = torch.zeros(len(positions), 1, 3, 3, dtype=x.dtype)
    for p, (i, j) in enumerate(positions):
        weight[p, 0, i, j] = 1
    padded = F.pad(x.reshape(b * k, 1, h, w), [d] * 4, mode="replicate")
    return F.conv2d(padded, weight, dilation=d).view(b, k, len(positions), h, w)


def reference_pamr(image, masks, iterations, dilations):
    x = image.double()
    sd = torch.cat([_stencil(x, d, True) for d in dilations], 2).std(2, keepdim=True)
    diff = torch.cat([(x.unsqueeze(2) - _stencil(x, d, False)).abs() for d in dilations], 2)
    aff = (-diff / (1e-8 + 0.1 * sd)).mean(1, keepdim=True).softmax(2)  # (B, 1, P, H, W)
    m = masks.double()
    for _ in range(iterations):
        m = (torch.cat([_stencil(m, d, False) for d in dilations], 2) * aff).sum(2)
    return m


@pytest.mark.parametrize("dilations", [(1,), (1, 2, 4), (1, 2, 4, 8, 12, 24)])
def test_matches_reference_implementation(dilations):
    torch.manual_seed(0)
    image = torch.rand(2, 3, 13, 17)
    masks = torch.rand(2, 4, 13, 17).softmax(1)
    out = pamr(image, masks, iterations=3, dilations=dilations)
    torch.testing.assert_close(out.double(), reference_pamr(image, masks, 3, dilations), atol=1e-5, rtol=1e-4)


def test_shape_and_convex_combination():
    torch.manual_seed(1)
    image = torch.rand(3, 3, 20, 24)
    probs = torch.rand(3, 5, 20, 24).softmax(1)
    out = PAMR(iterations=10)(image, probs)
    assert out.shape == probs.shape and out.dtype == probs.dtype
    torch.testing.assert_close(out.sum(1), torch.ones(3, 20, 24))
    assert out.min() >= probs.min() - 1e-6 and out.max() <= probs.max() + 1e-6
    weights = pamr_affinity(image)
    assert weights.shape == (3, 48, 20, 24) and (weights >= 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(3, 20, 24))


def test_low_resolution_masks_are_resized():
    out = pamr(torch.rand(1, 3, 16, 16), torch.rand(1, 2, 4, 4), iterations=2, dilations=(1, 2))
    assert out.shape == (1, 2, 16, 16)


def test_refines_mask_towards_image_edge():
    """A two-region image; the coarse mask puts the border 4 px off and is noisy. PAMR moves it back."""
    torch.manual_seed(0)
    h, w, edge = 32, 32, 16
    image = torch.full((1, 3, h, w), 0.2)
    image[..., edge:] = 0.8
    image += 0.02 * torch.randn_like(image)
    truth = torch.zeros(h, w, dtype=torch.long)
    truth[:, edge:] = 1
    coarse = torch.zeros(1, 2, h, w)
    coarse[:, 1, :, edge - 4 :] = 1.0
    coarse[:, 0] = 1 - coarse[:, 1]
    coarse = (coarse + 0.35 * torch.rand_like(coarse)).softmax(1)
    before = (coarse.argmax(1)[0] != truth).sum()
    after = (pamr(image, coarse).argmax(1)[0] != truth).sum()
    assert before >= 4 * h
    assert after < before / 4


def test_bad_arguments():
    with pytest.raises(ValueError):
        pamr(torch.rand(1, 3, 8, 8), torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError):
        PAMR(iterations=0)
