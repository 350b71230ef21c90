"""Image and mask I/O: round trips, and a DataError naming the file for every bad input."""

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from leafseg.data.io import (
    DataError,
    list_images,
    pair_images_masks,
    palette,
    read_image,
    read_mask,
    write_image,
    write_mask,
)


def _image(h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encoded(img, fmt):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


def test_image_round_trip(tmp_path):
    img = _image()
    path = write_image(tmp_path / "sub" / "a.png", img)
    assert np.array_equal(read_image(path), img)
    write_image(tmp_path / "a.jpg", img)
    assert read_image(tmp_path / "a.jpg").shape == (20, 30, 3)
    Image.fromarray(img[..., 0]).save(tmp_path / "grey.png")
    assert np.array_equal(read_image(tmp_path / "grey.png")[..., 2], img[..., 0])
    assert not list(tmp_path.glob("**/*.tmp"))  # atomic writes leave no temporaries


def test_palette_mask_reads_indices_not_colours(tmp_path):
    mask = np.random.default_rng(1).integers(0, 21, (16, 24)).astype(np.uint8)
    mask[0, 0] = 255
    path = write_mask(tmp_path / "m.png", mask, palette=palette(256))
    with Image.open(path) as im:
        assert im.mode == "P"
    out = read_mask(path, num_classes=21, expected_size=(16, 24))
    assert out.dtype == np.uint8 and np.array_equal(out, mask)
    plain = write_mask(tmp_path / "l.png", mask)
    with Image.open(plain) as im:
        assert im.mode == "L"
    assert np.array_equal(read_mask(plain), mask)


def test_palette_is_voc_style():
    pal = palette(256)
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert pal[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert len({tuple(c) for c in pal}) == 256


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_random_bytes_raise_data_error(tmp_path, suffix):
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match=path.name):
        read_image(path)


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_truncated_files_raise_data_error(tmp_path, fmt, suffix):
    data = _encoded(_image(64, 64), fmt)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=path.name) as err:
        read_image(path)
    assert "truncated" in str(err.value) or "corrupt" in str(err.value)


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="nothere.png"):
        read_image(tmp_path / "nothere.png")
    with pytest.raises(DataError, match="nothere.png"):
        read_mask(tmp_path / "nothere.png")


def test_mask_of_wrong_size(tmp_path):
    path = write_mask(tmp_path / "small.png", np.zeros((10, 12), np.uint8))
    with pytest.raises(DataError, match="small.png") as err:
        read_mask(path, expected_size=(20, 30))
    assert "10x12" in str(err.value) and "20x30" in str(err.value)


def test_mask_values_out_of_range(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[0, :3] = [7, 9, 255]
    path = write_mask(tmp_path / "range.png", mask)
    assert read_mask(path, num_classes=10).max() == 255  # ignore index is allowed
    with pytest.raises(DataError, match="range.png") as err:
        read_mask(path, num_classes=5)
    msg = str(err.value)
    assert "7, 9" in msg and "0..4" in msg and "255" in msg


def test_rgb_mask_is_rejected(tmp_path):
    path = tmp_path / "colour.png"
    Image.fromarray(_image(8, 8)).save(path)
    with pytest.raises(DataError, match="colour.png") as err:
        read_mask(path)
    assert "mode 'L' or 'P'" in str(err.value)


def test_corrupt_mask_raises_data_error(tmp_path):
    path = tmp_path / "bad_mask.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    with pytest.raises(DataError, match="bad_mask.png"):
        read_mask(path)


def test_write_validation(tmp_path):
    with pytest.raises(ValueError):
        write_mask(tmp_path / "m.jpg", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        write_mask(tmp_path / "m.png", np.full((4, 4), 300))
    with pytest.raises(ValueError):
        write_image(tmp_path / "i.png", np.zeros((4, 4, 3), np.float32))


def test_list_and_pair(tmp_path):
    imgs, masks = tmp_path / "images", tmp_path / "masks"
    for name in ("b", "a", "c"):
        write_image(imgs / f"{name}.jpg", _image(8, 8))
    (imgs / "notes.txt").write_text("x")
    (imgs / "D.PNG").write_bytes(_encoded(_image(8, 8), "PNG"))
    for name in ("a", "b", "extra"):
        write_mask(masks / f"{name}.png", np.zeros((8, 8), np.uint8))
    assert [p.name for p in list_images(imgs)] == ["D.PNG", "a.jpg", "b.jpg", "c.jpg"]
    pairs, unmatched = pair_images_masks(imgs, masks)
    assert [(i.name, m.name) for i, m in pairs] == [("a.jpg", "a.png"), ("b.jpg", "b.png")]
    assert unmatched == ["D.PNG", "c.jpg"]
    with pytest.raises(DataError, match="missing_dir"):
        list_images(tmp_path / "missing_dir")
    write_image(imgs / "a.png", _image(8, 8))
    with pytest.raises(DataError, match="share the stem"):
        pair_images_masks(imgs, masks)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 12), w=st.integers(1, 12), top=st.integers(0, 255), seed=st.integers(0, 2**16),
       use_palette=st.booleans())
def test_mask_round_trip_property(tmp_path, h, w, top, seed, use_palette):
    mask = np.random.default_rng(seed).integers(0, top + 1, (h, w)).astype(np.uint8)
    path = write_mask(tmp_path / "p.png", mask, palette=palette(256) if use_palette else None)
    assert np.array_equal(read_mask(path, num_classes=top + 1, expected_size=(h, w)), mask)
