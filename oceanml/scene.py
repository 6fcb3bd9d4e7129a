"""What a simulated device sees: the scenarios' distributions, and a JPEG of the scene whose
content follows its labels (water colour from algae and sediment, waves, sun glare, floating
debris by type, sensor noise)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from core.labels import DEBRIS_TYPES


@dataclass(frozen=True)
class ScenarioParams:
    debris_p: tuple[float, float, float]
    algae_p: tuple[float, float, float, float]
    turbidity_median: float
    wave_height_m: float
    salinity_shift: float
    darkness: float


SCENARIOS: dict[str, ScenarioParams] = {
    "normal": ScenarioParams((0.45, 0.35, 0.20), (0.6, 0.25, 0.1, 0.05), 2.0, 0.6, 0.0, 0.0),
    "storm": ScenarioParams((0.25, 0.35, 0.40), (0.7, 0.2, 0.07, 0.03), 25.0, 3.0, -2.5, 0.35),
    "bloom": ScenarioParams((0.45, 0.35, 0.20), (0.05, 0.15, 0.35, 0.45), 4.0, 0.5, 0.0, 0.05),
}
DEBRIS_COUNT = {"none": (0, 0), "light": (1, 3), "severe": (6, 14)}


def _water(
    rng: np.random.Generator, size: int, params: ScenarioParams, algae: int, turbidity: float,
    hour: float,
) -> np.ndarray:
    """Water colour from algae and sediment, waves as travelling stripes, light from the sun."""
    blue = np.array([18.0, 72.0, 128.0])
    green = np.array([46.0, 118.0, 58.0])
    brown = np.array([92.0, 84.0, 62.0])
    algae_mix = algae / 3 * 0.8
    sediment_mix = min(turbidity / 40.0, 1.0) * 0.7
    base = blue * (1 - algae_mix) + green * algae_mix
    base = base * (1 - sediment_mix) + brown * sediment_mix
    sun = max(0.0, math.sin(math.pi * (hour - 6) / 12))
    base = base * (0.45 + 0.55 * sun) * (1 - params.darkness)

    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    freq = rng.uniform(0.25, 0.5) / (1 + 0.15 * params.wave_height_m)
    phase = rng.uniform(0, 2 * math.pi)
    amplitude = 6 + 9 * params.wave_height_m
    waves = amplitude * np.sin(freq * (x * math.cos(angle) + y * math.sin(angle)) + phase)
    img = base[None, None, :] + waves[..., None] * np.array([0.6, 0.8, 1.0])

    if rng.random() < 0.35 * sun:  # sun glare
        cy, cx = rng.uniform(0, size, 2)
        radius = rng.uniform(size / 10, size / 4)
        glare = 140 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))
        img = img + glare[..., None]
    for _ in range(int(algae * 2.5)):  # algae patches
        cy, cx = rng.uniform(0, size, 2)
        radius = rng.uniform(4, 14)
        patch = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))
        img = img + patch[..., None] * np.array([-10.0, 45.0, -25.0])
    return img


DEBRIS_COLOURS = {
    "bottle": [(200, 230, 240), (60, 140, 70), (40, 90, 200)],
    "bag": [(235, 235, 235), (250, 250, 220)],
    "net": [(40, 160, 80), (230, 110, 30), (20, 60, 160)],
    "metal": [(150, 150, 155), (110, 105, 100)],
    "glass": [(120, 190, 120), (140, 90, 40)],
    "other": [(220, 40, 40), (240, 200, 30), (250, 120, 180)],
}


def _draw_debris(draw: ImageDraw.ImageDraw, rng: np.random.Generator, kind: str, size: int) -> None:
    """One floating object whose shape and colour follow its type."""
    colour = DEBRIS_COLOURS[kind][rng.integers(len(DEBRIS_COLOURS[kind]))]
    cx, cy = rng.uniform(4, size - 4, 2)
    s = rng.uniform(2.5, 7.0) * size / 96
    if kind == "bottle":
        w, h = s * 0.7, s * 2.2
        draw.rounded_rectangle([cx - w, cy - h, cx + w, cy + h], radius=2, fill=colour)
    elif kind == "bag":
        draw.ellipse([cx - 1.6 * s, cy - s, cx + 1.6 * s, cy + 1.2 * s], fill=colour)
    elif kind == "net":
        for k in range(-2, 3):
            draw.line([cx - 2 * s, cy + k * s / 1.5, cx + 2 * s, cy + k * s / 1.5], fill=colour)
            draw.line([cx + k * s / 1.5, cy - 2 * s, cx + k * s / 1.5, cy + 2 * s], fill=colour)
    elif kind == "metal":
        draw.rectangle([cx - s, cy - s * 0.6, cx + s, cy + s * 0.6], fill=colour)
        draw.line([cx - s, cy - s * 0.6, cx + s, cy - s * 0.6], fill=(240, 240, 240))
    elif kind == "glass":
        draw.polygon([(cx, cy - s), (cx + s, cy + s * 0.5), (cx - s, cy + s * 0.7)], fill=colour)
    else:
        draw.ellipse([cx - s, cy - s, cx + s, cy + s], fill=colour)


def render_image(
    rng: np.random.Generator,
    params: ScenarioParams,
    *,
    debris_level: str,
    debris_type: str,
    algae: int,
    turbidity: float,
    hour: float,
    size: int = 96,
) -> bytes:
    """A JPEG of the scene: debris count follows the level, the dominant type most objects."""
    water = _water(rng, size, params, algae, turbidity, hour)
    img = Image.fromarray(np.clip(water, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    lo, hi = DEBRIS_COUNT[debris_level]
    for _ in range(int(rng.integers(lo, hi + 1))):
        kind = debris_type if rng.random() < 0.8 else DEBRIS_TYPES[rng.integers(len(DEBRIS_TYPES))]
        _draw_debris(draw, rng, kind, size)
    arr = np.asarray(img, dtype=np.float32)
    arr = arr + rng.normal(0, 3 + 5 * params.darkness + 2 * rng.random(), arr.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()
