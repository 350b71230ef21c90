"""Pictures and pages a person would rather look at than read: overlays, galleries, an HTML report."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from leafseg.data.io import palette


def colorize(labels: np.ndarray, colours: np.ndarray | None = None, ignore_index: int = 255) -> np.ndarray:
    """labels (H, W) integer -> (H, W, 3) uint8; ``ignore_index`` pixels are black."""
    labels = np.asarray(labels)
    if colours is None:
        colours = palette(int(labels[labels != ignore_index].max(initial=0)) + 1)
    table = np.zeros((256, 3), np.uint8)
    table[: len(colours)] = colours[:256]
    out = table[np.clip(labels, 0, 255).astype(np.int64)]
    out[labels == ignore_index] = 0
    return out


def overlay(image: np.ndarray, labels: np.ndarray, colours=None, alpha: float = 0.55) -> np.ndarray:
    """Blend a label map over an image. image (H, W, 3) uint8, labels (H, W) -> (H, W, 3) uint8.

    Region borders are drawn in white so that neighbouring regions of similar colour stay distinct.
    """
    colour = colorize(labels, colours).astype(np.float32)
    out = (1 - alpha) * image.astype(np.float32) + alpha * colour
    edge = np.zeros(labels.shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    out[edge] = 255
    return out.clip(0, 255).astype(np.uint8)


def with_legend(image: np.ndarray, names: Sequence[str], colours: np.ndarray, *, swatch: int = 12,
                pad: int = 4) -> np.ndarray:
    """The image with a legend to its right: per entry a colour square and the name, drawn with Pillow.

    image (H, W, 3) uint8, colours (len(names), 3) uint8 -> (max(H, pad + len(names) * (swatch + pad)),
    W + legend width, 3) uint8. The image is pasted unchanged at the top left; entry i's square covers
    rows ``pad + i * (swatch + pad)`` onwards and columns ``W + pad`` onwards, ``swatch`` pixels each way,
    framed in grey; the rest of the canvas is white.
    """
    image = np.asarray(image)
    h, w = image.shape[:2]
    font = ImageFont.load_default()
    boxes = [font.getbbox(name) for name in names]
    text_w = max((box[2] for box in boxes), default=0)
    row = swatch + pad
    canvas = Image.new("RGB", (w + 3 * pad + swatch + text_w, max(h, pad + len(names) * row)), "white")
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (name, box) in enumerate(zip(names, boxes, strict=True)):
        x, y = w + pad, pad + i * row
        draw.rectangle([x - 1, y - 1, x + swatch, y + swatch], outline=(128, 128, 128))
        draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=tuple(int(v) for v in colours[i]))
        draw.text((x + swatch + pad, y + (swatch - (box[3] - box[1])) // 2 - box[1]), name, fill=(0, 0, 0),
                  font=font)
    return np.asarray(canvas)


def gallery(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], path: str | Path,
            scale: int = 2, pad: int = 4) -> Path:
    """Write a grid of equally sized tiles (each (H, W, 3) uint8), one row per image, column titles on top."""
    tiles = [[np.asarray(t) for t in row] for row in rows]
    h, w = tiles[0][0].shape[:2]
    h, w = h * scale, w * scale
    cols = len(titles)
    head = 16
    canvas = Image.new("RGB", (cols * (w + pad) + pad, head + len(tiles) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles):
        draw.text((pad + c * (w + pad), 2), title, fill=(0, 0, 0))
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            img = Image.fromarray(tile).resize((w, h), Image.NEAREST)
            canvas.paste(img, (pad + c * (w + pad), head + pad + r * (h + pad)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def legend_html(names: Sequence[str], colours: np.ndarray) -> str:
    """Colour swatches with class names."""
    items = "".join(
        f'<span class="sw"><i style="background:rgb{tuple(int(v) for v in colours[i])}"></i>'
        f"{html.escape(n)}</span>"
        for i, n in enumerate(names)
    )
    return f'<div class="legend">{items}</div>'


def bars_html(values: dict[str, float], unit: str = "%") -> str:
    """A horizontal bar per named value in [0, 100] (NaN shown as n/a)."""
    rows = []
    for name, v in values.items():
        ok = v == v
        width = max(0.0, min(100.0, v)) if ok else 0.0
        label = f"{v:.1f}{unit}" if ok else "n/a"
        rows.append(f'<tr><td>{html.escape(name)}</td><td class="bar"><div style="width:{width:.1f}%">'
                    f"</div></td><td>{label}</td></tr>")
    return '<table class="bars">' + "".join(rows) + "</table>"


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table.metrics{border-collapse:collapse}table.metrics td,table.metrics th{padding:4px 12px;
border-bottom:1px solid #eee;text-align:left}table.bars td{padding:2px 8px}
td.bar{width:320px}td.bar div{background:#4a8;height:12px;border-radius:2px}
.legend .sw{display:inline-block;margin:2px 10px 2px 0}.legend i{display:inline-block;width:12px;
height:12px;margin-right:4px;vertical-align:middle;border:1px solid #999}
img{max-width:100%;border:1px solid #ddd}.note{color:#666;font-size:.9em}
"""


def write_html(path: str | Path, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """A self-contained page: ``sections`` are (heading, inner HTML) pairs, in order."""
    body = "".join(f"<h2>{html.escape(h)}</h2>{inner}" for h, inner in sections)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path


def metrics_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """An HTML table of dictionaries; floats printed with one decimal."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)

    def cell(v):
        return f"{v:.1f}" if isinstance(v, float) else html.escape(str(v))

    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f'<table class="metrics"><tr>{head}</tr>{body}</table>'
