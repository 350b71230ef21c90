"""Reading and writing images and label masks, with errors that name the file.

Masks are single-channel PNGs of class indices: mode 'L' (values are the indices) or
mode 'P' (the palette indices are the class ids; the palette is only for viewing).
255 conventionally marks pixels to ignore. Colour (RGB) masks are rejected, because
their colours would have to be mapped back to ids with a table this module cannot know.

Decoding always forces the full image to be read, so truncated or corrupt files fail
here, at read time, with a :class:`DataError` (PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES``
must stay off; when it is on PIL silently pads truncated files and they cannot be caught).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from leafseg.errors import UserError
from leafseg.files import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LOSSLESS_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


class DataError(UserError, ValueError):
    """A data file is missing, unreadable or inconsistent; the message names the file and the fix."""


def _open(path: str | os.PathLike, what: str) -> Image.Image:
    """Open and fully decode an image file, turning every failure into a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found; check the dataset root and split names.")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()  # the copy outlives the closed file
    except _DECODE_ERRORS as exc:
        raise DataError(
            f"{path}: cannot decode {what} ({type(exc).__name__}: {exc}). The file is corrupt, "
            f"truncated or not an image; re-export it or remove it from the dataset."
        ) from exc


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB: (H, W, 3) uint8.

    Grey, palette and RGBA images are converted to RGB (alpha dropped); 16-bit grey
    images are scaled to 8 bits. Raises DataError naming the file when it is missing,
    unreadable, corrupt or truncated.
    """
    im = _open(path, "image")
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I") else max(float(arr.max()), 1.0)
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def _mask_values(im: Image.Image, path: Path) -> np.ndarray:
    """Class indices of a decoded mask image: (H, W) uint8 (or int64 for 16/32-bit masks)."""
    if im.mode in ("P", "L"):
        return np.asarray(im, dtype=np.uint8).copy()  # for 'P' these are the palette indices
    if im.mode == "1":
        return np.asarray(im, dtype=np.uint8).copy()
    if im.mode in ("I", "I;16", "I;16B", "I;16L"):
        return np.asarray(im).astype(np.int64)
    hint = ""
    if im.mode in ("RGB", "RGBA"):
        rgb = np.asarray(im.convert("RGB"))
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
            hint = (" All three channels are equal, so it is likely a grey index mask saved as RGB;"
                    " re-save it as mode 'L'.")
        else:
            hint = " If it is a colour-coded mask, map each colour to its class id first."
    raise DataError(
        f"{path}: mask has {len(im.getbands())} channels (mode {im.mode!r}); masks must be "
        f"single-channel PNGs of class indices (mode 'L' or 'P').{hint}"
    )


def read_mask(path: str | os.PathLike, num_classes: int | None = None, ignore_index: int = 255,
              expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a class-index mask: (H, W) uint8 (int64 for 16-bit masks).

    Palette PNGs are read as their indices (never converted to colours). ``expected_size``
    is the (H, W) shape of the mask's image, e.g. ``image.shape[:2]``; a mismatch raises
    DataError naming the file and both sizes. With ``num_classes``, any value outside
    0..num_classes-1 other than ``ignore_index`` raises DataError listing the values.
    """
    path = Path(path)
    mask = _mask_values(_open(path, "mask"), path)
    if expected_size is not None and tuple(mask.shape) != tuple(expected_size):
        (h, w), (eh, ew) = mask.shape, expected_size
        raise DataError(
            f"{path}: mask is {h}x{w} (HxW) but its image is {eh}x{ew} (HxW); a mask must have "
            f"exactly the size of its image (resize it with nearest-neighbour, or fix the pairing)."
        )
    if num_classes is not None:
        bad = ((mask >= num_classes) | (mask < 0)) & (mask != ignore_index)
        if bad.any():
            values = np.unique(mask[bad])
            shown = ", ".join(str(int(v)) for v in values[:10]) + (", ..." if len(values) > 10 else "")
            raise DataError(
                f"{path}: mask has {int(bad.sum())} pixels with values {{{shown}}} outside the valid "
                f"range 0..{num_classes - 1} (or {ignore_index} = ignore); check num_classes and the "
                f"dataset's label mapping."
            )
    return mask


def _atomic_save(im: Image.Image, path: str | os.PathLike, **params) -> Path:
    """Save ``im`` next to ``path`` under a temporary name, then rename over ``path``."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image extension {path.suffix!r}; use one of {IMAGE_EXTENSIONS}")
    return atomic_write(path, lambda f: im.save(f, format=fmt, **params))


def write_image(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Write an (H, W, 3) or (H, W) uint8 image atomically; the format follows the extension."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"{path}: expected an (H, W, 3) or (H, W) uint8 image, got {img.shape} {img.dtype}")
    params = {"quality": 95} if Path(path).suffix.lower() in (".jpg", ".jpeg") else {}
    return _atomic_save(Image.fromarray(img), path, **params)


def write_mask(path: str | os.PathLike, mask: np.ndarray, palette: np.ndarray | None = None) -> Path:
    """Write an (H, W) integer mask with values in 0..255 atomically, losslessly.

    Without ``palette`` the file is mode 'L'; with an (n, 3) uint8 ``palette`` it is a
    palette PNG whose indices are the class ids (the colours are only for viewing).
    """
    mask = np.asarray(mask)
    if Path(path).suffix.lower() not in LOSSLESS_EXTENSIONS:
        raise ValueError(f"{path}: masks must use a lossless format {LOSSLESS_EXTENSIONS}")
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"{path}: expected an (H, W) integer mask, got {mask.shape} {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"{path}: mask values must lie in 0..255, got {mask.min()}..{mask.max()}")
    values = np.ascontiguousarray(mask, dtype=np.uint8)
    im = Image.fromarray(values)  # mode 'L'
    if palette is not None:
        pal = np.zeros((256, 3), dtype=np.uint8)
        given = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
        pal[: len(given)] = given
        im = Image.frombytes("P", im.size, values.tobytes())
        im.putpalette(pal.reshape(-1).tolist())
    return _atomic_save(im, path)


def list_images(folder: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files directly inside ``folder`` (any case of the given extensions), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found; check the dataset root and split names.")
    exts = {e.lower() for e in extensions}
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)


def pair_images_masks(image_dir: str | os.PathLike, mask_dir: str | os.PathLike,
                      mask_suffix: str = "") -> tuple[list[tuple[Path, Path]], list[str]]:
    """Pair images with masks by file stem (mask stem = image stem + ``mask_suffix``).

    Returns ``(pairs, unmatched)``: (image path, mask path) pairs sorted by image name,
    and the names of images that have no mask. Masks without an image are ignored.
    Raises DataError when two files in one folder share a stem (e.g. ``a.png`` and ``a.jpg``).
    """
    masks: dict[str, Path] = {}
    for m in list_images(mask_dir):
        if m.stem in masks:
            raise DataError(f"{m}: two masks share the stem {m.stem!r} ({masks[m.stem].name}); keep one.")
        masks[m.stem] = m
    pairs, unmatched, seen = [], [], {}
    for img in list_images(image_dir):
        if img.stem in seen:
            raise DataError(f"{img}: two images share the stem {img.stem!r} ({seen[img.stem].name}); keep one.")
        seen[img.stem] = img
        mask = masks.get(img.stem + mask_suffix)
        if mask is None:
            unmatched.append(img.name)
        else:
            pairs.append((img, mask))
    return pairs, unmatched


def palette(n: int = 256) -> np.ndarray:
    """A distinct colour per class id, PASCAL-VOC style (bits of the id interleaved): (n, 3) uint8."""
    ids = np.arange(n)
    out = np.zeros((n, 3), dtype=np.int64)
    for bit in range(8):
        for ch in range(3):
            out[:, ch] |= ((ids >> (bit * 3 + ch)) & 1) << (7 - bit)
    return out.astype(np.uint8)
