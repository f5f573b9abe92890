"""Per-session scene conditions and per-tracklet capture settings (degradations, occluders).

Scene conditions (background, sun, illumination) depend only on (session, camera), shared by
every person filmed there, so they carry no identity information.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model.data.synth.identity import RGB, jitter_colour
from model.data.synth.render import Capture, Occluder
from model.data.synth.views import View

GROUND_SCENES: tuple[tuple[RGB, RGB], ...] = (
    ((150, 82, 62), (120, 60, 48)),  # brick
    ((160, 160, 155), (135, 135, 132)),  # concrete
    ((62, 100, 52), (40, 75, 38)),  # hedge
    ((92, 110, 128), (70, 85, 100)),  # glass facade
    ((84, 84, 88), (100, 100, 104)),  # asphalt
)
AERIAL_SCENES: tuple[tuple[RGB, RGB], ...] = (
    ((72, 118, 52), (55, 96, 40)),  # grass
    ((86, 86, 92), (70, 70, 76)),  # asphalt
    ((172, 162, 142), (150, 140, 122)),  # paving
    ((142, 112, 82), (120, 95, 70)),  # dirt path
)


@dataclass(frozen=True)
class SceneEnv:
    """Conditions at one camera on one capture day."""

    background: RGB
    background_alt: RGB
    sun: tuple[float, float, float] | None
    gain: tuple[float, float, float]


def scene_env(view: View, rng: np.random.Generator) -> SceneEnv:
    """Draw the scene at ``view`` for one session."""
    scenes = AERIAL_SCENES if view.platform == "aerial" else GROUND_SCENES
    bg, alt = scenes[int(rng.integers(len(scenes)))]
    cloudy = rng.random() < 0.3
    az = rng.uniform(0, 2 * math.pi)
    el = math.radians(rng.uniform(30, 65))
    sun = None if cloudy else (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))
    level = rng.uniform(0.7, 0.9) if cloudy else rng.uniform(0.9, 1.2)
    warmth = rng.uniform(-0.08, 0.08)
    gain = (level * (1 + warmth), level, level * (1 - warmth))
    return SceneEnv(jitter_colour(bg, rng, 8.0), jitter_colour(alt, rng, 8.0), sun, gain)


def _occluder(view: View, rng: np.random.Generator) -> Occluder:
    if view.platform == "aerial":
        kind = "foliage" if rng.random() < 0.6 else "car"
    else:
        kind = ("pole", "car", "person")[int(rng.integers(3))]
    if kind == "pole":
        x = rng.uniform(0.15, 0.75)
        box = (x, -0.1, x + rng.uniform(0.08, 0.16), 1.1)
        colour: RGB = jitter_colour((110, 110, 112), rng, 10.0)
    elif kind == "car":
        top = rng.uniform(0.55, 0.75)
        left = rng.uniform(-0.3, 0.3)
        box = (left, top, left + rng.uniform(0.7, 1.2), 1.1)
        colour = jitter_colour((int(rng.integers(40, 220)), int(rng.integers(40, 220)), int(rng.integers(40, 220))), rng)
    elif kind == "foliage":
        cx, cy, r = rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0), rng.uniform(0.25, 0.45)
        box = (cx - r, cy - r, cx + r, cy + r)
        colour = jitter_colour((45, 85, 38), rng, 10.0)
    else:  # a passer-by's body in the foreground
        x = rng.choice([-0.25, 0.75])
        box = (x, 0.1, x + 0.45, 1.1)
        colour = jitter_colour((60, 60, 70), rng, 25.0)
    drift = (rng.uniform(-0.03, 0.03), rng.uniform(-0.005, 0.005))
    return Occluder(kind, colour, box, drift)


def sample_capture(view: View, env: SceneEnv, rng: np.random.Generator) -> Capture:
    """Per-tracklet capture settings: heading, exact scale and the degradations."""
    heading = float(view.headings[int(rng.integers(len(view.headings)))] + rng.uniform(-1, 1) * view.heading_jitter)
    px_per_m = view.px_per_m * rng.uniform(0.9, 1.1)
    aerial = view.platform == "aerial"
    far = float(np.clip((view.range_m - 10.0) / 110.0, 0.0, 1.0)) if aerial else 0.0
    if aerial:
        blur = rng.uniform(0.25, 0.5) + 0.3 * far
        moving = rng.random() < 0.35
        motion_len = rng.uniform(0.8, 2.5) if moving else 0.0
        noise = rng.uniform(2.5, 6.0) + 3.0 * far
        quality = int(rng.uniform(45, 85) - 20 * far)
        occluded = rng.random() < 0.15
    else:
        blur = rng.uniform(0.0, 0.35)
        moving = rng.random() < 0.1
        motion_len = rng.uniform(0.5, 1.5) if moving else 0.0
        noise = rng.uniform(1.5, 4.0)
        quality = int(rng.uniform(70, 92))
        occluded = rng.random() < 0.2
    angle = rng.uniform(0, 2 * math.pi)
    gain = tuple(float(g * rng.uniform(0.95, 1.05)) for g in env.gain)
    return Capture(
        pitch_deg=view.pitch_deg,
        heading=heading,
        px_per_m=float(px_per_m),
        background=jitter_colour(env.background, rng, 6.0),
        background_alt=jitter_colour(env.background_alt, rng, 6.0),
        ground_view=not aerial,
        sun=env.sun,
        gain=(gain[0], gain[1], gain[2]),
        blur_sigma=float(blur),
        motion=(motion_len * math.cos(angle), motion_len * math.sin(angle)),
        noise_sigma=float(noise),
        jpeg_quality=max(20, quality),
        occluder=_occluder(view, rng) if occluded else None,
        margin=float(rng.uniform(0.06, 0.16)),
    )
