import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from leafseg.eval.sliding import SlidingWindowPredictor, resized_shape, slide_windows

C = 4


def pointwise_model(seed=0):
    """A 1x1 convolution: translation-equivariant, so windows agree with the whole image."""
    conv = torch.nn.Conv2d(3, C, 1)
    torch.manual_seed(seed)
    torch.nn.init.normal_(conv.weight)
    return conv.eval()


def patch_model(patch=4):
    """Non-equivariant, lower-resolution output: a patch-pooled 3x3 convolution (zero padded)."""
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, C, 3, padding=1).eval()
    return lambda x: conv(F.avg_pool2d(x, patch, ceil_mode=True))


def test_whole_equals_single_covering_window():
    images = torch.randn(2, 3, 37, 53)
    model = patch_model()
    whole = SlidingWindowPredictor(model, C, mode="whole")(images)
    slide = SlidingWindowPredictor(model, C, mode="slide", crop=64, stride=32)(images)
    assert whole.shape == (2, C, 37, 53)
    torch.testing.assert_close(slide, whole, rtol=0, atol=0)


@pytest.mark.parametrize("short_side,multiple", [(24, None), (30, 14), (None, 14)])
def test_whole_equals_covering_window_after_resize(short_side, multiple):
    images = torch.randn(1, 3, 40, 70)
    model = patch_model(2)
    kwargs = dict(short_side=short_side, size_multiple=multiple)
    whole = SlidingWindowPredictor(model, C, mode="whole", **kwargs)(images)
    slide = SlidingWindowPredictor(model, C, mode="slide", crop=512, stride=256, **kwargs)(images)
    assert whole.shape == (1, C, 40, 70)
    torch.testing.assert_close(slide, whole, rtol=0, atol=0)


@pytest.mark.parametrize(
    "size,crop,stride,batch_windows",
    [((50, 97), 32, 20, 8), ((64, 64), 32, 16, 1), ((20, 100), 32, 24, 3), ((45, 33), (16, 24), (10, 7), 5)],
)
def test_equivariant_model_slide_equals_whole(size, crop, stride, batch_windows):
    images = torch.randn(3, 3, *size)
    model = pointwise_model()
    whole = SlidingWindowPredictor(model, C, mode="whole")(images)
    slide = SlidingWindowPredictor(
        model, C, mode="slide", crop=crop, stride=stride, batch_windows=batch_windows
    )(images)
    torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-5)


def reference_slide(images, model, crop, stride):
    """Per-image, per-window numpy reference of mmseg's slide_inference."""
    b, _, h, w = images.shape
    out = np.zeros((b, C, h, w))
    for n in range(b):
        total, count = np.zeros((C, h, w)), np.zeros((h, w))
        rows = max(h - crop + stride - 1, 0) // stride + 1
        cols = max(w - crop + stride - 1, 0) // stride + 1
        for i in range(rows):
            for j in range(cols):
                y1, x1 = i * stride, j * stride
                y2, x2 = min(y1 + crop, h), min(x1 + crop, w)
                y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
                window = images[n : n + 1, :, y1:y2, x1:x2]
                logits = F.interpolate(model(window), size=(y2 - y1, x2 - x1), mode="bilinear")
                total[:, y1:y2, x1:x2] += logits[0].numpy()
                count[y1:y2, x1:x2] += 1
        out[n] = total / count
    return out


@torch.no_grad()
def test_overlap_averaging_matches_reference_loop():
    images = torch.randn(2, 3, 29, 41)
    model = patch_model(4)
    got = SlidingWindowPredictor(model, C, mode="slide", crop=16, stride=10, batch_windows=3)(images)
    np.testing.assert_allclose(got.numpy(), reference_slide(images, model, 16, 10), rtol=1e-5, atol=1e-5)


@settings(max_examples=60, deadline=None, database=None)
@given(
    h=st.integers(1, 60),
    w=st.integers(1, 60),
    crop=st.tuples(st.integers(1, 32), st.integers(1, 32)),
    stride_frac=st.tuples(st.floats(0.1, 1.0), st.floats(0.1, 1.0)),
)
def test_window_grid_covers_image_with_equal_windows(h, w, crop, stride_frac):
    stride = tuple(max(1, int(c * f)) for c, f in zip(crop, stride_frac, strict=True))
    windows = slide_windows(h, w, crop, stride)
    rows = max(h - crop[0] + stride[0] - 1, 0) // stride[0] + 1
    cols = max(w - crop[1] + stride[1] - 1, 0) // stride[1] + 1
    assert len(windows) == rows * cols
    cover = np.zeros((h, w), dtype=int)
    for y1, y2, x1, x2 in windows:
        assert 0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w
        assert (y2 - y1, x2 - x1) == (min(crop[0], h), min(crop[1], w))
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1
    assert windows[-1][1] == h and windows[-1][3] == w


def test_image_smaller_than_crop_is_one_clipped_window():
    assert slide_windows(100, 150, 224, 112) == [(0, 100, 0, 150)]
    assert slide_windows(100, 300, 224, 112) == [(0, 100, 0, 224), (0, 100, 76, 300)]


def test_low_resolution_model_output_is_upsampled():
    model = lambda x: torch.ones(x.shape[0], C, x.shape[2] // 14, x.shape[3] // 14)  # noqa: E731
    images = torch.randn(2, 3, 50, 90)
    for mode in ("whole", "slide"):
        out = SlidingWindowPredictor(model, C, mode=mode, crop=28, stride=14, size_multiple=14)(images)
        assert out.shape == (2, C, 50, 90) and out.dtype == torch.float32
        torch.testing.assert_close(out, torch.ones_like(out))


def test_resized_shape():
    assert resized_shape(40, 70) == (40, 70)
    assert resized_shape(40, 70, short_side=20) == (20, 35)
    assert resized_shape(70, 40, short_side=448) == (784, 448)
    assert resized_shape(40, 70, size_multiple=14) == (42, 70)
    assert resized_shape(41, 70, short_side=30, size_multiple=14) == (42, 56)


def test_model_is_called_with_batched_windows():
    sizes = []

    def model(x):
        sizes.append(x.shape[0])
        return torch.zeros(x.shape[0], C, *x.shape[-2:])

    SlidingWindowPredictor(model, C, mode="slide", crop=8, stride=4, batch_windows=6)(
        torch.randn(2, 3, 16, 16)
    )
    assert sum(sizes) == 2 * 9 and max(sizes) == 6


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        SlidingWindowPredictor(pointwise_model(), C, mode="tile")
    with pytest.raises(ValueError, match="uncovered"):
        SlidingWindowPredictor(pointwise_model(), C, mode="slide", crop=16, stride=17)
    with pytest.raises(ValueError, match="expected"):
        SlidingWindowPredictor(pointwise_model(), C + 1)(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        SlidingWindowPredictor(pointwise_model(), C)(torch.randn(3, 8, 8))
