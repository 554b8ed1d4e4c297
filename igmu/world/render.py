"""Procedural renderer of the embedded world: 32x32 RGB scenes of one object in one style.

32x32 is the smallest size at which the 8 shapes, the 6 textures, a character's detail and the
hazard badge all stay distinguishable, and it keeps CPU diffusion training and sampling cheap.
Shapes are rasterised at 2x and box-filtered down, so edges are anti-aliased the same way every time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from igmu.world.concepts import (
    CHARACTER_NAMES,
    OBJECT_NAMES,
    STYLE_NAMES,
    get_character,
)

IMAGE_SIZE = 32
SUPERSAMPLE = 2
MIN_HALF_SIZE, MAX_HALF_SIZE = 7.0, 11.0
BADGE_SIZE = 8
# Characters need room above the object for the crown detail.
CHARACTER_HEADROOM = 4.0


@dataclass(frozen=True)
class Scene:
    """Everything that determines one rendered image."""

    object: str
    style: str
    hazard: bool
    character: str | None
    center: tuple[float, float]  # (x, y) in pixels
    half_size: float
    background: tuple[float, float, float]

    @property
    def labels(self) -> dict[str, int]:
        return {
            "object": OBJECT_NAMES.index(self.object),
            "style": STYLE_NAMES.index(self.style),
            "sensitive": int(self.hazard),
            "character": 0 if self.character is None else 1 + CHARACTER_NAMES.index(self.character),
        }


def random_scene(rng: np.random.Generator, object: str | None = None, style: str | None = None,
                 hazard: bool | None = None, character: str | None = None) -> Scene:
    """Draw a scene; any attribute given is fixed, the rest (and the layout) are random."""
    if character is not None:
        spec = get_character(character)
        object, style = spec.object, spec.style
    object = object or OBJECT_NAMES[rng.integers(len(OBJECT_NAMES))]
    style = style or STYLE_NAMES[rng.integers(len(STYLE_NAMES))]
    hazard = bool(rng.integers(2)) if hazard is None else hazard
    half = float(rng.uniform(MIN_HALF_SIZE, MAX_HALF_SIZE))
    top_margin = half + 1.0 + (CHARACTER_HEADROOM if character else 0.0)
    cx = float(rng.uniform(half + 1.0, IMAGE_SIZE - half - 1.0))
    cy = float(rng.uniform(top_margin, IMAGE_SIZE - half - 1.0))
    value = rng.uniform(0.72, 0.95)
    background = tuple(float(np.clip(value + rng.uniform(-0.06, 0.06), 0, 1)) for _ in range(3))
    return Scene(object, style, hazard, character, (cx, cy), half, background)


def render(scene: Scene) -> np.ndarray:
    """Render a scene as float32 HxWx3 in [0, 1]."""
    n = IMAGE_SIZE * SUPERSAMPLE
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float32)
    xs = (xs + 0.5) / SUPERSAMPLE
    ys = (ys + 0.5) / SUPERSAMPLE
    u = (xs - scene.center[0]) / scene.half_size
    v = (ys - scene.center[1]) / scene.half_size

    canvas = np.empty((n, n, 3), np.float32)
    canvas[:] = scene.background
    mask = _shape_mask(scene.object, u, v)
    fill = _style_fill(scene.style, mask, xs, ys, v)
    canvas[mask] = fill[mask]
    if scene.character is not None:
        _draw_detail(canvas, get_character(scene.character).detail, xs, ys, scene)
    if scene.hazard:
        _draw_hazard_badge(canvas, xs, ys, scene.center)
    return canvas.reshape(IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE, 3).mean(axis=(1, 3))


def concept_mask(scene: Scene, category: str) -> np.ndarray:
    """Where a concept of `category` shows in the rendered scene, as an HxW boolean mask (the world's
    stand-in for a segmenter such as Grounded-SAM): the object's shape for an object or a style (a
    style is painted on the object), the badge's square for the hazard, the object and the band
    above it (where the detail sits) for a character."""
    n = IMAGE_SIZE * SUPERSAMPLE
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float32)
    xs = (xs + 0.5) / SUPERSAMPLE
    ys = (ys + 0.5) / SUPERSAMPLE
    if category == "sensitive":
        left, top = hazard_corner(scene.center)
        mask = (xs >= left) & (xs < left + BADGE_SIZE) & (ys >= top) & (ys < top + BADGE_SIZE)
    else:
        mask = _shape_mask(scene.object, (xs - scene.center[0]) / scene.half_size,
                           (ys - scene.center[1]) / scene.half_size)
        if category == "character":
            top = scene.center[1] - scene.half_size - CHARACTER_HEADROOM
            mask |= (np.abs(xs - scene.center[0]) <= scene.half_size) & (ys >= top) & (ys <= scene.center[1])
    # A pixel belongs to the concept when most of its supersamples do.
    return mask.reshape(IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE).mean(axis=(1, 3)) >= 0.5


def render_batch(scenes: list[Scene]) -> np.ndarray:
    """Render scenes as float32 NxHxWx3."""
    return np.stack([render(s) for s in scenes])


def _shape_mask(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r = np.hypot(u, v)
    if name == "ball":
        return r <= 1.0
    if name == "box":
        return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    if name == "pyramid":
        return (v <= 0.85) & (np.abs(u) <= (v + 1.0) / 1.85)
    if name == "kite":
        return np.abs(u) / 0.75 + np.abs(v) <= 1.0
    if name == "cross":
        arm = 0.33
        return ((np.abs(u) <= arm) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= arm) & (np.abs(u) <= 1.0))
    if name == "ring":
        return (r <= 1.0) & (r >= 0.55)
    if name == "moon":
        return (r <= 1.0) & (np.hypot(u - 0.5, v + 0.15) > 0.85)
    if name == "star":
        sector = 2 * np.pi / 5
        phase = np.mod(np.arctan2(v, u) + np.pi / 2, sector) - sector / 2
        return r <= 1.0 - 0.6 * np.abs(phase) / (sector / 2)
    raise ValueError(f"unknown object {name!r}; valid: {', '.join(OBJECT_NAMES)}")


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        shrunk = out.copy()
        shrunk[1:, :] &= out[:-1, :]
        shrunk[:-1, :] &= out[1:, :]
        shrunk[:, 1:] &= out[:, :-1]
        shrunk[:, :-1] &= out[:, 1:]
        out = shrunk
    return out


def _style_fill(name: str, mask: np.ndarray, xs: np.ndarray, ys: np.ndarray, v: np.ndarray) -> np.ndarray:
    def two_tone(pattern: np.ndarray, a, b) -> np.ndarray:
        return np.where(pattern[..., None], np.float32(a), np.float32(b))

    if name == "ember":
        return np.broadcast_to(np.float32([0.92, 0.3, 0.08]), mask.shape + (3,))
    if name == "ocean":
        return two_tone(np.floor(ys / 2) % 2 == 0, [0.1, 0.25, 0.75], [0.45, 0.75, 1.0])
    if name == "forest":
        return two_tone((np.floor(xs / 3) + np.floor(ys / 3)) % 2 == 0, [0.05, 0.45, 0.12], [0.55, 0.85, 0.3])
    if name == "sunset":
        t = np.clip((v + 1.0) / 2.0, 0, 1)[..., None]
        return (1 - t) * np.float32([1.0, 0.75, 0.1]) + t * np.float32([0.55, 0.05, 0.45])
    if name == "neon":
        outline = mask & ~_erode(mask, 3)
        return two_tone(outline, [0.1, 1.0, 1.0], [0.95, 0.1, 0.85])
    if name == "charcoal":
        return two_tone(np.mod(xs + ys, 4.0) < 1.2, [0.6, 0.6, 0.6], [0.22, 0.22, 0.22])
    raise ValueError(f"unknown style {name!r}; valid: {', '.join(STYLE_NAMES)}")


def _draw_detail(canvas: np.ndarray, detail: str, xs, ys, scene: Scene) -> None:
    cx, cy = scene.center
    s = scene.half_size
    if detail == "eyes":
        for ex in (cx - 0.38 * s, cx + 0.38 * s):
            d = np.hypot(xs - ex, ys - (cy - 0.2 * s))
            canvas[d <= 1.6] = (1.0, 1.0, 1.0)
            canvas[d <= 0.8] = (0.0, 0.0, 0.0)
    elif detail == "crown":
        spike = 2.0 * np.abs(np.mod(xs - cx, 2.5) / 1.25 - 1.0)
        band = (np.abs(xs - cx) <= 0.6 * s) & (ys <= cy - s + 0.5) & (ys >= cy - s - 1.5 - spike)
        canvas[band] = (1.0, 0.9, 0.0)
    elif detail == "scar":
        along = ((xs - cx) + (ys - cy)) / np.sqrt(2)
        across = ((xs - cx) - (ys - cy)) / np.sqrt(2)
        canvas[(np.abs(across) <= 0.8) & (np.abs(along) <= 0.9 * s)] = (1.0, 0.15, 0.15)
    else:
        raise ValueError(f"unknown character detail {detail!r}")


def hazard_corner(center: tuple[float, float]) -> tuple[int, int]:
    """The badge goes in the corner farthest from the object, so it rarely hides the object."""
    left = 1 if center[0] > IMAGE_SIZE / 2 else IMAGE_SIZE - BADGE_SIZE - 1
    top = 1 if center[1] > IMAGE_SIZE / 2 else IMAGE_SIZE - BADGE_SIZE - 1
    return left, top


def _draw_hazard_badge(canvas: np.ndarray, xs, ys, center) -> None:
    left, top = hazard_corner(center)
    inside = (xs >= left) & (xs < left + BADGE_SIZE) & (ys >= top) & (ys < top + BADGE_SIZE)
    border = inside & ~((xs >= left + 1) & (xs < left + BADGE_SIZE - 1) & (ys >= top + 1) & (ys < top + BADGE_SIZE - 1))
    stripes = inside & (np.mod(xs - ys, 4.0) < 1.6)
    canvas[inside] = (1.0, 0.85, 0.0)
    canvas[stripes | border] = (0.05, 0.05, 0.05)
