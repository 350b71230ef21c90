import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from leafseg.data.augment import RandomResizedCropFlip, StrongAugment, cutmix_boxes, cutmix_partners, mix
from leafseg.data.transforms import RandomScaleCropFlip, padding_ignore_map


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 6), h=st.integers(8, 40), w=st.integers(8, 40), seed=st.integers(0, 10_000))
def test_cutmix_boxes_are_rectangles_of_the_published_area(batch, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    boxes = cutmix_boxes(batch, h, w, p=1.0, generator=g)
    assert boxes.shape == (batch, h, w) and boxes.dtype == torch.bool
    for box in boxes:
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        if len(rows) == 0:
            continue  # a box whose side rounds down to 0 pixels
        # a filled rectangle: its bounding box is all True
        assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        assert box.sum() <= 0.4 * h * w + 1e-6


def test_cutmix_probability():
    g = torch.Generator().manual_seed(0)
    assert not cutmix_boxes(16, 32, 32, p=0.0, generator=g).any()
    applied = cutmix_boxes(4000, 16, 16, p=0.5, generator=g).flatten(1).any(1).float().mean()
    assert 0.45 < applied < 0.55
    area = cutmix_boxes(2000, 64, 64, p=1.0, generator=g).float().mean()
    assert 0.15 < area < 0.23  # about the mean of U(0.02, 0.4), a little less from flooring the sides


@pytest.mark.parametrize("batch", [1, 2, 5, 8])
def test_partners_are_a_permutation_without_fixed_points(batch):
    for seed in range(10):
        p = cutmix_partners(batch, generator=torch.Generator().manual_seed(seed))
        assert sorted(p.tolist()) == list(range(batch))
        if batch > 1:
            assert (p != torch.arange(batch)).all()


def test_images_labels_confidence_and_ignore_are_mixed_alike():
    b, h, w = 6, 20, 24
    g = torch.Generator().manual_seed(3)
    boxes, partners = cutmix_boxes(b, h, w, p=1.0, generator=g), cutmix_partners(b, generator=g)
    ident = torch.arange(b).view(b, 1, 1).expand(b, h, w)
    images = ident[:, None].expand(b, 3, h, w).float()
    labels, conf, ignore = ident.clone(), ident.float() / 10, (ident * 40).clone()
    mixed = [mix(t, boxes, partners) for t in (images, labels, conf, ignore)]
    source = mixed[0][:, 0].long()  # which image each pixel now comes from
    assert torch.equal(mixed[1], source)
    assert torch.equal(mixed[2], source.float() / 10)
    assert torch.equal(mixed[3], source * 40)
    assert torch.equal(source != ident, boxes)  # exactly the box pixels changed
    assert torch.equal(source[boxes], partners.view(b, 1, 1).expand(b, h, w)[boxes])


def test_strong_augment_is_per_image_in_range_and_seeded():
    aug = StrongAugment()
    x = torch.rand(1, 3, 32, 32).expand(8, 3, 32, 32).contiguous()
    torch.manual_seed(0)
    y = aug(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert len({round(float(v), 5) for v in y.flatten(1).mean(1)}) > 4  # images drew their own parameters
    torch.manual_seed(0)
    assert torch.equal(aug(x), y)


def test_blur_kernel_covers_three_sigma():
    assert StrongAugment().kernel == 13


def test_geometric_transform_pads_crops_and_flips_jointly():
    image = torch.zeros(3, 20, 30)
    image[0] = torch.arange(30).float() / 30  # a horizontal ramp: tells flips apart
    mask = torch.arange(30).repeat(20, 1)
    t = RandomScaleCropFlip(48, scale_range=(1.0, 1.0))
    seen_flip = set()
    for seed in range(20):
        img, msk = t(image, mask, np.random.default_rng(seed))
        assert img.shape == (3, 48, 48) and msk.shape == (48, 48) and msk.dtype == torch.int64
        valid = msk != 255
        assert not img[:, ~valid].any()  # padding is image 0 and mask 255
        assert valid.sum() == 20 * 30
        cols = img[0][valid].view(20, 30)[0]
        labels = msk[valid].view(20, 30)[0].float() / 30
        torch.testing.assert_close(cols, labels, atol=1 / 255, rtol=0)  # image and mask moved together
        seen_flip.add(bool(labels[0] > labels[-1]))
    assert seen_flip == {True, False}


def test_geometric_transform_scale_range_and_seeding():
    image, mask = torch.rand(3, 40, 60), torch.randint(0, 5, (40, 60))
    t = RandomScaleCropFlip(32)
    a = t(image, mask, np.random.default_rng(7))
    b = t(image, mask, np.random.default_rng(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert set(a[1].unique().tolist()) <= set(range(5)) | {255}
    with pytest.raises(ValueError):
        t(image, mask[:, :10], np.random.default_rng(0))


def test_unlabelled_ignore_map_marks_only_padding():
    image = torch.rand(3, 16, 16)
    t = RandomScaleCropFlip(40, scale_range=(1.0, 1.0))
    img, ignore = padding_ignore_map(image, t, np.random.default_rng(0))
    assert (ignore == 255).sum() == 40 * 40 - 16 * 16
    assert set(ignore.unique().tolist()) == {0, 255}


def test_random_resized_crop_flip_draws_per_image_views_in_range_and_seeded():
    images = torch.rand(6, 3, 40, 48)
    augment = RandomResizedCropFlip(32, scale=(0.3, 1.0), flip=0.5)
    torch.manual_seed(0)
    a = augment(images)
    torch.manual_seed(0)
    b = augment(images)
    assert a.shape == (6, 3, 32, 32) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)  # torch's generator decides the views: checkpointed RNG states replay them
    assert not torch.allclose(a[0], augment(images[:1])[0])  # views are drawn, not fixed


def test_random_resized_crop_flip_whole_image_and_certain_flip():
    images = torch.rand(2, 3, 16, 16)
    same = RandomResizedCropFlip(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0)(images)
    flipped = RandomResizedCropFlip(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=1.0)(images)
    assert torch.allclose(same, images, atol=1e-5)
    assert torch.allclose(flipped, images.flip(-1), atol=1e-5)
