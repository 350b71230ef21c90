"""Object ("thing") shapes and their textures for the synthetic world.

Each painter takes ``(rng, yy, xx, cy, cx, r)``: the (H, W) float32 pixel grid, the
object's centre in pixels and its size ``r`` in pixels (about half its extent), and
returns ``(mask, rgb)``: an exact (H, W) bool shape mask and an (H, W, 3) float32 RGB
texture that is only meaningful inside the mask. Shape parameters (aspect, rotation,
number of petals, variant) and colours are drawn from ``rng``, so every instance differs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from leafseg.data.synthetic_render import (
    Anchor,
    any_colour,
    lattice_noise,
    rotated,
    sample_colour,
)

ThingPainter = Callable[..., tuple[np.ndarray, np.ndarray]]

BOX_COLOURS: tuple[Anchor, ...] = ((0.08, 0.55, 0.60), (0.10, 0.35, 0.80), (0.0, 0.60, 0.60),
                                   (0.60, 0.50, 0.60), (0.0, 0.03, 0.70))
CROWN_COLOURS: tuple[Anchor, ...] = ((0.30, 0.65, 0.50), (0.22, 0.60, 0.55), (0.08, 0.70, 0.75),
                                     (0.0, 0.60, 0.60), (0.38, 0.50, 0.35))
BARK_COLOURS: tuple[Anchor, ...] = ((0.07, 0.50, 0.35), (0.0, 0.05, 0.40))
STAR_COLOURS: tuple[Anchor, ...] = ((0.14, 0.80, 0.95), (0.0, 0.0, 0.95), (0.0, 0.70, 0.85),
                                    (0.55, 0.50, 0.90), (0.08, 0.60, 0.90))
HOUSE_COLOURS: tuple[Anchor, ...] = ((0.10, 0.30, 0.85), (0.0, 0.02, 0.90), (0.58, 0.30, 0.80),
                                     (0.30, 0.30, 0.70), (0.02, 0.50, 0.65))
ROOF_COLOURS: tuple[Anchor, ...] = ((0.02, 0.60, 0.50), (0.0, 0.0, 0.30), (0.60, 0.30, 0.45))
FLOWER_COLOURS: tuple[Anchor, ...] = ((0.90, 0.50, 0.90), (0.78, 0.50, 0.70), (0.0, 0.70, 0.85),
                                      (0.0, 0.02, 0.95), (0.15, 0.70, 0.95), (0.58, 0.50, 0.85))
CENTRE_COLOURS: tuple[Anchor, ...] = ((0.13, 0.85, 0.90), (0.08, 0.70, 0.40))
GLASS_COLOURS: tuple[Anchor, ...] = ((0.55, 0.25, 0.85), (0.0, 0.0, 0.25))
STEM_COLOURS: tuple[Anchor, ...] = ((0.30, 0.60, 0.45),)
F32 = np.float32


def _fill(shape: tuple[int, int], colour: np.ndarray) -> np.ndarray:
    """A (H, W, 3) float32 image of one colour."""
    return np.broadcast_to(colour.astype(np.float32), (*shape, 3)).copy()


def paint_ball(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float,
               r: float) -> tuple[np.ndarray, np.ndarray]:
    """A shaded disc; half of them are beach balls with coloured sectors."""
    dx, dy = (xx - F32(cx)) / F32(r), (yy - F32(cy)) / F32(r)
    d2 = dx * dx + dy * dy
    mask = d2 <= 1.0
    base = _fill(yy.shape, any_colour(rng, sat=(0.35, 0.95), val=(0.55, 0.98)))
    if rng.random() < 0.5:
        sectors = int(rng.integers(2, 5))
        angle = np.arctan2(dy, dx) + F32(rng.uniform(0, np.pi))
        stripe = (np.floor(angle / F32(np.pi / sectors)).astype(np.int64) % 2).astype(bool)
        base[stripe] = any_colour(rng, sat=(0.0, 0.9), val=(0.8, 1.0))
    lx, ly = rng.uniform(-0.7, -0.2), rng.uniform(-0.7, -0.2)
    z = np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
    light = np.clip(F32(lx) * dx + F32(ly) * dy + 0.7 * z, 0.0, 1.2)
    spot = np.exp(-((dx - F32(lx * 0.6)) ** 2 + (dy - F32(ly * 0.6)) ** 2) / 0.03)
    rgb = base * (0.35 + 0.65 * light)[..., None] + 0.45 * spot[..., None]
    return mask, rgb


def paint_box(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float,
               r: float) -> tuple[np.ndarray, np.ndarray]:
    """A rotated rectangle with dark edges, wood grain and an optional tape band."""
    u, v = rotated(yy, xx, rng.uniform(-0.6, 0.6), cy, cx)
    a, b = r * rng.uniform(0.7, 1.0), r * rng.uniform(0.55, 1.0)
    mask = (np.abs(u) <= a) & (np.abs(v) <= b)
    period = rng.uniform(2.5, 4.0)
    grain = np.sin(v * F32(2 * np.pi / period) + 1.5 * lattice_noise(rng, u / 8.0, v / 2.0))
    shade = 0.9 + 0.1 * grain
    edge = np.minimum(F32(a) - np.abs(u), F32(b) - np.abs(v)) < 1.5
    shade = np.where(edge, F32(0.55), shade)
    rgb = _fill(yy.shape, sample_colour(rng, BOX_COLOURS)) * shade[..., None]
    if rng.random() < 0.5:
        tape = (np.abs(u) < F32(a * 0.15)) & ~edge
        rgb[tape] = sample_colour(rng, BOX_COLOURS) * 1.15
    return mask, rgb


def paint_tree(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float,
               r: float) -> tuple[np.ndarray, np.ndarray]:
    """A leafy crown (round, or a pine triangle) on a bark trunk."""
    dx, dy = xx - F32(cx), yy - F32(cy)
    if rng.random() < 0.5:
        crown = (dx * dx + (dy + F32(0.25 * r)) ** 2) <= F32((0.75 * r) ** 2)
    else:
        depth = (dy + F32(r)) / F32(1.35 * r)  # 0 at the apex, 1 at the base
        crown = (depth >= 0) & (depth <= 1) & (np.abs(dx) <= F32(0.7 * r) * depth)
    trunk = (np.abs(dx) <= F32(max(1.0, 0.13 * r))) & (dy >= 0) & (dy <= F32(r))
    leaves = lattice_noise(rng, xx / 2.2, yy / 2.2)
    crown_rgb = _fill(yy.shape, sample_colour(rng, CROWN_COLOURS))
    crown_rgb *= (0.72 + 0.3 * leaves - 0.25 * (leaves < -0.55))[..., None]
    bark = 0.85 + 0.15 * np.sin(xx * F32(2.5) + lattice_noise(rng, xx / 1.5, yy / 6.0))
    trunk_rgb = _fill(yy.shape, sample_colour(rng, BARK_COLOURS)) * bark[..., None]
    rgb = np.where(crown[..., None], crown_rgb, trunk_rgb)
    return crown | trunk, rgb


def paint_star(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float,
               r: float) -> tuple[np.ndarray, np.ndarray]:
    """A five-pointed star with bevelled (two-tone) points and a bright centre."""
    dx, dy = xx - F32(cx), yy - F32(cy)
    rho = np.sqrt(dx * dx + dy * dy)
    sector = 2 * np.pi / 5
    a = np.mod(np.arctan2(dy, dx) - F32(rng.uniform(0, sector)), F32(sector))
    folded = np.minimum(a, F32(sector) - a)  # 0 at a point's tip, sector/2 at the notch
    inner = r * rng.uniform(0.38, 0.5)
    p1 = np.array([r, 0.0])
    p2 = np.array([inner * np.cos(sector / 2), inner * np.sin(sector / 2)])
    nx, ny = p2[1] - p1[1], p1[0] - p2[0]  # a normal of the edge p1 -> p2
    edge = (nx * p1[0] + ny * p1[1]) / (F32(nx) * np.cos(folded) + F32(ny) * np.sin(folded))
    mask = rho <= edge
    bevel = np.where(a < F32(sector / 2), F32(1.0), F32(0.78))
    shade = bevel * (1.08 - 0.3 * rho / np.maximum(edge, F32(1e-3)))
    rgb = _fill(yy.shape, sample_colour(rng, STAR_COLOURS)) * shade[..., None]
    return mask, rgb


def paint_car(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float,
               r: float) -> tuple[np.ndarray, np.ndarray]:
    """A side-view car: rounded body, cabin with windows, two wheels with hubs."""
    side = 1.0 if rng.random() < 0.5 else -1.0
    dx, dy = (xx - F32(cx)) / F32(r), (yy - F32(cy)) / F32(r)
    corner = ((np.abs(dx) - 0.85) ** 2 + (np.abs(dy) - 0.15) ** 2 > 0.0225)
    corner &= (np.abs(dx) > 0.85) & (np.abs(dy) > 0.15)
    body = (np.abs(dx) <= 1.0) & (np.abs(dy) <= 0.3) & ~corner
    top = np.clip((-0.3 - dy) / 0.45, 0, 1)  # 0 at the roof line's base, 1 at the roof
    cab_x = dx - F32(side * 0.1)
    cabin = (dy < -0.3) & (dy >= -0.75) & (np.abs(cab_x) <= 0.55 - 0.2 * top)
    window = cabin & (dy >= -0.66) & (dy <= -0.36) & (np.abs(cab_x) <= 0.45 - 0.2 * top)
    window &= np.abs(cab_x) > 0.05
    wheel_d2 = np.minimum((dx - 0.58) ** 2, (dx + 0.58) ** 2) + (dy - 0.3) ** 2
    wheel, hub = wheel_d2 <= 0.0676, wheel_d2 <= 0.01
    paint = _fill(yy.shape, any_colour(rng, sat=(0.3, 0.95), val=(0.35, 0.95)))
    gloss = 0.8 + 0.3 * np.clip(0.3 - dy, 0, 1.05) - 0.2 * (np.abs(dy - 0.02) < 0.04)
    rgb = paint * gloss[..., None]
    rgb[window] = sample_colour(rng, GLASS_COLOURS)
    rgb[wheel] = np.float32(rng.uniform(0.05, 0.2))
    rgb[hub] = np.float32(rng.uniform(0.55, 0.8))
    return body | cabin | wheel, rgb


def paint_house(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float,
               r: float) -> tuple[np.ndarray, np.ndarray]:
    """A house front: sided walls, a triangular shingled roof, a door and a window."""
    dx, dy = (xx - F32(cx)) / F32(r), (yy - F32(cy)) / F32(r)
    walls = (np.abs(dx) <= 0.75) & (dy >= -0.1) & (dy <= 0.85)
    depth = (dy + 0.95) / 0.85  # 0 at the ridge, 1 at the eaves
    roof = (depth >= 0) & (dy < -0.1) & (np.abs(dx) <= 0.95 * depth)
    period = F32(rng.uniform(2.5, 3.8))
    siding = np.where(np.mod(yy, period) < 1.0, F32(0.8), F32(1.0))
    rgb = _fill(yy.shape, sample_colour(rng, HOUSE_COLOURS)) * siding[..., None]
    shingle = np.where(np.mod(yy + F32(0.5), period * 1.3) < 1.0, F32(0.7), F32(1.0))
    rgb[roof] = (sample_colour(rng, ROOF_COLOURS) * shingle[..., None])[roof]
    door_x = rng.choice([-0.35, 0.35])
    door = walls & (np.abs(dx - F32(door_x)) <= 0.15) & (dy >= 0.4)
    window = walls & (np.abs(dx + F32(door_x)) <= 0.17) & (np.abs(dy - 0.3) <= 0.15)
    rgb[door] = sample_colour(rng, BARK_COLOURS)
    rgb[window] = sample_colour(rng, GLASS_COLOURS)
    return walls | roof, rgb


def paint_flower(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float,
               r: float) -> tuple[np.ndarray, np.ndarray]:
    """Radial petals around a speckled centre disc, on a thin green stem."""
    dx, dy = xx - F32(cx), yy - F32(cy)
    rho = np.sqrt(dx * dx + dy * dy) / F32(r)
    petals = int(rng.integers(5, 9))
    angle = np.arctan2(dy, dx) + F32(rng.uniform(0, np.pi))
    lobe = np.abs(np.cos(angle * F32(petals / 2)))
    head = rho <= 0.45 + 0.55 * lobe
    centre = rho <= rng.uniform(0.22, 0.32)
    stem_w = max(0.8, 0.07 * r)
    stem = (np.abs(dx) <= F32(stem_w)) & (dy > 0) & (dy <= F32(1.5 * r))
    rgb = _fill(yy.shape, sample_colour(rng, FLOWER_COLOURS)) * (0.7 + 0.3 * lobe + 0.1 * rho)[..., None]
    dots = rng.random(yy.shape) < 0.3
    rgb[centre] = sample_colour(rng, CENTRE_COLOURS) * np.where(dots, F32(0.6), F32(1.0))[centre][:, None]
    stem_only = stem & ~head
    rgb[stem_only] = sample_colour(rng, STEM_COLOURS)
    return head | stem, rgb


THING_PAINTERS: dict[str, ThingPainter] = {
    "ball": paint_ball,
    "box": paint_box,
    "tree": paint_tree,
    "star": paint_star,
    "car": paint_car,
    "house": paint_house,
    "flower": paint_flower,
}
