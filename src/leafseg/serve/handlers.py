"""What the buttons of a ``leafseg serve`` page do, in plain Python: the page (:mod:`leafseg.serve.page`)
only wires them to its widgets, so everything here is tested without a browser.

    answer = segment_for_page(shelf.get("maskclip (clip_vitb16)"), image, "sky, grass, ball")
    answer.picture   # (H', W', 3) uint8: the overlay at the image's resolution, its legend to the right
    answer.table     # per class: index, name, colour, share of the pixels (the shares sum to 1)
    shares_html(answer.table)

Bad input (no image, no class names, a model that cannot label them) raises
:class:`~leafseg.errors.UserError` with a sentence meant for the page.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leafseg.errors import UserError
from leafseg.eval.segment import (
    DEFAULT_ALPHA,
    check_alpha,
    model_class_names,
    predict_labels,
    render_segmentation,
)
from leafseg.serve.models import PageModel

DEFAULT_REGIONS = 4  # k-means regions when the page does not say
MAX_SIDE = 1024  # the model sees larger images shrunk to this longer side; the answer keeps their size


@dataclass
class Answer:
    """The page's answer for one image: ``picture`` (H', W', 3) uint8 (the class colours over the image
    at its own resolution, with a legend of the classes present to its right), ``table`` (one row per
    class: {"index", "name", "colour", "share"}) and ``message`` (one line on what was done)."""

    picture: np.ndarray
    table: list[dict]
    message: str


def parse_class_names(text: str | None) -> list[str]:
    """``"sky, grass,, ball "`` -> ``["sky", "grass", "ball"]``. Raises UserError when no name is left or
    a name repeats."""
    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    if not names:
        raise UserError("Type at least one class name, comma-separated, e.g. sky, grass, ball.")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"Each class name once, please: {', '.join(repeated)} appears more than once.")
    return names


def as_rgb(image) -> np.ndarray:
    """The page's image as (H, W, 3) uint8: grey gains three channels and an alpha channel is dropped.
    Raises UserError when there is no image or it is not one."""
    if image is None:
        raise UserError("No image yet: upload one, paste one, or pick a synthetic scene.")
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or min(array.shape[:2]) < 1:
        raise UserError(f"Cannot read this image (an array of shape {array.shape}); try a PNG or JPEG file.")
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array[..., :3])


def class_names_for(model: PageModel, text: str | None, regions: int = DEFAULT_REGIONS) -> list[str]:
    """The names ``model`` labels with: its own classes (fixed; ``text`` is ignored), the typed ones
    (open) or ``region 1`` .. ``region k`` for k = ``regions`` (k-means)."""
    if model.vocabulary == "fixed":
        return list(model.classes)
    if model.vocabulary == "regions":
        k = int(regions)
        if not 1 <= k <= 64:
            raise UserError(f"Ask for 1 to 64 regions, not {k}.")
        return [f"region {i + 1}" for i in range(k)]
    return model_class_names(model.method, parse_class_names(text), model.label, option=None)


def segment_for_page(model: PageModel, image, class_text: str | None, *, regions: int = DEFAULT_REGIONS,
                     alpha: float = DEFAULT_ALPHA, max_side: int | None = MAX_SIDE, device: str = "cpu") -> Answer:
    """Label ``image`` ((H, W, 3) or (H, W) array, as the page's image widget gives it) with ``model``.

    class_text: the typed, comma-separated class names (used by open-vocabulary models). regions: how
    many regions k-means finds. alpha: opacity of the class colours. max_side: the model sees the image
    shrunk to this longer side if it is larger (None: never); the answer is at the image's own size.
    """
    image = as_rgb(image)
    names = class_names_for(model, class_text, regions)
    check_alpha(alpha)
    start = time.perf_counter()
    labels, names = predict_labels(model.method, image, names, max_side=max_side, device=device)
    seconds = time.perf_counter() - start
    picture, table = render_segmentation(image, labels, names, alpha=alpha)
    h, w = image.shape[:2]
    message = f"{model.label}: {len(names)} classes on a {w} x {h} image in {seconds:.2f} s"
    if max_side is not None and max(h, w) > max_side:
        message += f" (the model saw it shrunk to {max_side} px on its longer side)"
    return Answer(picture, table, message + ".")


def shares_html(table: list[dict]) -> str:
    """An HTML table of the classes found in the image, largest share first: a colour swatch, the name, the
    share of the image in percent (one decimal) and a bar of that length; each such row carries
    ``data-name`` and ``data-share`` (the exact fraction). The classes with no pixel follow in one last
    row, "not in the image: ...", which carries ``data-absent`` (their names, comma-separated)."""
    rows, absent = [], []
    for row in sorted(table, key=lambda r: (-r["share"], r["index"])):
        if row["share"] == 0:
            absent.append(row["name"])
            continue
        rgb = "rgb({}, {}, {})".format(*row["colour"])
        percent = 100.0 * row["share"]
        rows.append(
            f'<tr data-name="{html.escape(row["name"])}" data-share="{row["share"]:.6f}">'
            f'<td><span class="leafseg-swatch" style="background:{rgb}"></span></td>'
            f'<td class="leafseg-name">{html.escape(row["name"])}</td>'
            f'<td class="leafseg-share">{percent:.1f} %</td>'
            f'<td class="leafseg-bar"><div style="width:{percent:.1f}%;background:{rgb}"></div></td></tr>')
    if absent:
        names = html.escape(", ".join(absent))
        rows.append(f'<tr class="leafseg-absent" data-absent="{names}"><td></td>'
                    f'<td colspan="3">not in the image: {names}</td></tr>')
    head = "<tr><th></th><th>class</th><th>share of the image</th><th></th></tr>"
    return f'<table class="leafseg-shares"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def write_scenes(folder: str | Path, n: int, *, size: int = 192, seed: int = 0) -> list[Path]:
    """Write the first ``n`` validation scenes of the synthetic world (:mod:`leafseg.data.synthetic`) as
    ``scene_1.png`` .. into ``folder`` (created if needed); returns their paths."""
    from leafseg.data.io import write_image
    from leafseg.data.synthetic import SyntheticWorld

    world = SyntheticWorld(seed=seed, size=size)
    folder = Path(folder)
    return [write_image(folder / f"scene_{k + 1}.png", world.scene(world.index("val", k)).image) for k in range(n)]
