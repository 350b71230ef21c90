"""Colours, noise and background ("stuff") textures for the synthetic world.

Every painter is vectorised over a pixel grid: ``yy`` and ``xx`` are (H, W) float32
arrays of row and column coordinates in pixels. Painters return float32 RGB images of
shape (H, W, 3) with values roughly in [0, 1]; the caller composites them with exact
boolean region masks, so the class masks stay exact.

Colour distributions are mixtures of HSV "anchors" with jitter. Anchors are shared
between classes on purpose (grey sky, grey water and grey walls; orange sunsets and
orange sand; green grass and green trees), so that a pixel's colour alone does not
give its class away. Each class instead has a typical texture (smooth gradients,
vertical blades, horizontal waves, fine speckle, bricks) that a small model can learn.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Sequence

import numpy as np

Anchor = tuple[float, float, float]  # (hue, saturation, value), each in [0, 1]

STUFF_COLOURS: dict[str, tuple[Anchor, ...]] = {
    "sky": ((0.58, 0.45, 0.90), (0.62, 0.65, 0.75), (0.0, 0.03, 0.75), (0.07, 0.45, 0.90),
            (0.85, 0.25, 0.80), (0.50, 0.40, 0.70)),
    "grass": ((0.28, 0.60, 0.60), (0.20, 0.60, 0.70), (0.11, 0.45, 0.55), (0.35, 0.50, 0.40),
              (0.50, 0.40, 0.55)),
    "water": ((0.57, 0.60, 0.65), (0.48, 0.55, 0.60), (0.0, 0.03, 0.62), (0.33, 0.40, 0.45),
              (0.62, 0.45, 0.85), (0.07, 0.40, 0.80)),
    "sand": ((0.11, 0.35, 0.88), (0.08, 0.50, 0.85), (0.0, 0.03, 0.85), (0.13, 0.55, 0.75),
             (0.02, 0.45, 0.60), (0.58, 0.30, 0.80)),
    "wall": ((0.02, 0.60, 0.60), (0.0, 0.03, 0.62), (0.10, 0.30, 0.80), (0.58, 0.15, 0.70),
             (0.08, 0.50, 0.50), (0.30, 0.35, 0.55)),
}
WHITES: tuple[Anchor, ...] = ((0.0, 0.02, 0.97), (0.6, 0.08, 0.9), (0.1, 0.1, 0.92), (0.0, 0.0, 0.7))
MORTARS: tuple[Anchor, ...] = ((0.0, 0.0, 0.85), (0.0, 0.0, 0.35), (0.1, 0.15, 0.7))

Painter = Callable[[np.random.Generator, np.ndarray, np.ndarray], np.ndarray]


def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates: two (H, W) float32 arrays."""
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32),
                         indexing="ij")
    return yy, xx


def sample_colour(rng: np.random.Generator, anchors: Sequence[Anchor],
                  jitter: tuple[float, float, float] = (0.035, 0.12, 0.12)) -> np.ndarray:
    """Draw one colour from a jittered mixture of HSV anchors: (3,) float32 RGB in [0, 1]."""
    h, s, v = anchors[int(rng.integers(len(anchors)))]
    h = (h + rng.normal(0.0, jitter[0])) % 1.0
    s = float(np.clip(s + rng.normal(0.0, jitter[1]), 0.0, 1.0))
    v = float(np.clip(v + rng.normal(0.0, jitter[2]), 0.08, 1.0))
    return np.asarray(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)


def any_colour(rng: np.random.Generator, sat: tuple[float, float] = (0.45, 0.95),
               val: tuple[float, float] = (0.45, 0.95)) -> np.ndarray:
    """A colour of uniformly random hue: (3,) float32 RGB in [0, 1]."""
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return np.asarray(rgb, dtype=np.float32)


def lattice_noise(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, table: int = 32) -> np.ndarray:
    """Smooth value noise sampled at lattice coordinates.

    ``u`` and ``v`` are float arrays of one shape, in lattice cells (one random value per
    integer point, smoothstep-interpolated between them); scaling or rotating them makes
    the noise anisotropic. Returns float32 of the same shape, in [-1, 1], about zero mean.
    """
    values = rng.uniform(-1.0, 1.0, (table, table)).astype(np.float32)
    u = u + np.float32(rng.uniform(0, table))
    v = v + np.float32(rng.uniform(0, table))
    fu, fv = np.floor(u), np.floor(v)
    tu, tv = u - fu, v - fv
    tu, tv = tu * tu * (3 - 2 * tu), tv * tv * (3 - 2 * tv)
    iu, iv = fu.astype(np.int64) % table, fv.astype(np.int64) % table
    iu1, iv1 = (iu + 1) % table, (iv + 1) % table
    top = values[iv, iu] + (values[iv, iu1] - values[iv, iu]) * tu
    bottom = values[iv1, iu] + (values[iv1, iu1] - values[iv1, iu]) * tu
    return np.clip((top + (bottom - top) * tv) * 1.8, -1.0, 1.0)


def rotated(yy: np.ndarray, xx: np.ndarray, angle: float, cy: float = 0.0,
            cx: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (u along, v across) after rotating by ``angle`` radians about (cy, cx).

    Returns two float32 arrays shaped like ``yy``.
    """
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    dx, dy = xx - np.float32(cx), yy - np.float32(cy)
    return dx * c + dy * s, -dx * s + dy * c


def paint_sky(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Smooth vertical gradient with soft low-frequency clouds. Returns (H, W, 3) float32."""
    h, w = yy.shape
    base = sample_colour(rng, STUFF_COLOURS["sky"])
    grad = 1.0 + np.float32(rng.uniform(0.1, 0.35)) * (yy / h - 0.5)
    cells = rng.uniform(2.0, 4.5)
    clouds = lattice_noise(rng, xx * (cells / w) * 0.6, yy * (cells / h))
    cover = np.clip((clouds - rng.uniform(-0.3, 0.5)) * 1.5, 0, 1) * np.float32(rng.uniform(0.2, 0.7))
    white = sample_colour(rng, WHITES)
    img = base * grad[..., None]
    return img * (1 - cover[..., None]) + white * cover[..., None]


def paint_grass(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Thin, slightly slanted vertical blades over gentle patches. Returns (H, W, 3) float32."""
    base = sample_colour(rng, STUFF_COLOURS["grass"])
    blade_w, blade_len = rng.uniform(1.1, 2.2), rng.uniform(5.0, 10.0)
    slant = np.float32(rng.uniform(-0.3, 0.3))
    blades = lattice_noise(rng, (xx + slant * yy) / blade_w, yy / blade_len)
    patches = lattice_noise(rng, xx / 24.0, yy / 24.0)
    shade = 0.78 + 0.32 * blades + 0.08 * patches
    return base * shade[..., None]


def paint_water(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Near-horizontal wave bands with bright glints. Returns (H, W, 3) float32."""
    base = sample_colour(rng, STUFF_COLOURS["water"])
    period = rng.uniform(5.0, 10.0)
    u, v = rotated(yy, xx, rng.normal(0.0, 0.12))
    wobble = np.float32(rng.uniform(0.4, 1.2)) * np.sin(u * np.float32(2 * np.pi / rng.uniform(14, 30)))
    phase = v * np.float32(2 * np.pi / period) + wobble + 0.7 * lattice_noise(rng, u / 12.0, v / 5.0)
    t = np.sin(phase + np.float32(rng.uniform(0, 2 * np.pi)))
    shade = 0.86 + 0.16 * t + 0.25 * (t > 0.93)
    return base * shade[..., None]


def paint_sand(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Fine per-pixel speckle, sparse grains and faint ripples. Returns (H, W, 3) float32."""
    base = sample_colour(rng, STUFF_COLOURS["sand"])
    speck = rng.standard_normal(yy.shape).astype(np.float32) * np.float32(rng.uniform(0.05, 0.09))
    u, _ = rotated(yy, xx, rng.uniform(0, np.pi))
    ripple = 0.05 * np.sin(u * np.float32(2 * np.pi / rng.uniform(9.0, 16.0)))
    grains = (rng.random(yy.shape) < 0.03).astype(np.float32)
    shade = (1.0 + speck + ripple) * (1.0 - 0.22 * grains)
    return base * shade[..., None]


def paint_wall(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Staggered bricks with mortar joints. Returns (H, W, 3) float32."""
    base, mortar = sample_colour(rng, STUFF_COLOURS["wall"]), sample_colour(rng, MORTARS)
    bh = rng.uniform(5.0, 9.0)
    bw = bh * rng.uniform(1.8, 2.6)
    joint = rng.uniform(0.9, 1.5)
    y = yy + np.float32(rng.uniform(0, bh))
    row = np.floor(y / bh).astype(np.int64)
    x = xx + np.float32(rng.uniform(0, bw)) + (row % 2) * np.float32(bw / 2)
    col = np.floor(x / bw).astype(np.int64)
    brick_shade = rng.normal(0.0, 0.09, (64, 64)).astype(np.float32)[row % 64, col % 64]
    fine = rng.standard_normal(yy.shape).astype(np.float32) * 0.03
    img = base * (1.0 + brick_shade + fine)[..., None]
    is_joint = (np.mod(y, bh) < joint) | (np.mod(x, bw) < joint)
    img[is_joint] = mortar
    return img


STUFF_PAINTERS: dict[str, Painter] = {
    "sky": paint_sky,
    "grass": paint_grass,
    "water": paint_water,
    "sand": paint_sand,
    "wall": paint_wall,
}


def hue_rotation(degrees: float) -> np.ndarray:
    """3x3 float32 matrix rotating RGB colours about the grey axis (a hue shift)."""
    theta = np.deg2rad(degrees)
    k = np.full(3, 1 / np.sqrt(3))
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rot = np.cos(theta) * np.eye(3) + np.sin(theta) * cross + (1 - np.cos(theta)) * np.outer(k, k)
    return rot.astype(np.float32)
