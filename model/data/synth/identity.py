"""What makes a SynthXFD person: identity traits (fixed) and outfits (re-drawn per session).

Identity = body proportions, gait, skin and hair: the cues a model can carry across sessions.
Outfit = clothing colours, pattern and layers: drawn independently for each session, and the
second session's main colours are forced away from the first's, so clothing alone cannot
match an identity across sessions.
"""

from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

RGB = tuple[int, int, int]

# Base clothing colours; each draw is jittered so identities rarely share an exact colour.
CLOTHING_BASE: tuple[RGB, ...] = (
    (20, 20, 22), (235, 235, 230), (128, 128, 130), (30, 40, 90), (40, 90, 180), (180, 30, 35),
    (40, 120, 60), (190, 170, 120), (110, 70, 40), (225, 190, 40), (220, 120, 160), (110, 50, 140),
    (230, 120, 30), (70, 100, 140), (0, 140, 140), (150, 160, 60),
)
# Natural shades first; the last four are dyed colours, drawn for about one person in six.
HAIR_NATURAL: tuple[RGB, ...] = (
    (18, 14, 12), (55, 35, 22), (100, 65, 35), (200, 165, 100), (150, 70, 35), (175, 175, 170),
    (235, 225, 190), (240, 240, 235),
)
HAIR_DYED: tuple[RGB, ...] = ((40, 70, 200), (220, 60, 150), (30, 160, 120), (120, 40, 170))
DYED_HAIR_P = 0.17
SKIN_LIGHT: RGB = (240, 205, 180)
SKIN_DARK: RGB = (85, 55, 40)
HAIR_STYLES: tuple[str, ...] = ("short", "long", "bald", "ponytail", "curly", "afro", "bun")
TOP_PATTERNS: tuple[str, ...] = ("solid", "stripes", "two_tone", "split")
BOTTOM_STYLES: tuple[str, ...] = ("trousers", "trousers", "shorts", "skirt")


@dataclass(frozen=True)
class Identity:
    """Traits fixed for a person. Lengths in metres, angles in radians."""

    pid: int
    height: float
    build: float
    leg_ratio: float
    shoulder_ratio: float
    hip_ratio: float
    head_ratio: float
    arm_ratio: float
    stride: float
    cadence: float
    arm_swing: float
    bounce: float
    lean: float
    skin: RGB
    hair: RGB
    hair_style: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Outfit:
    """Clothing of one person in one session."""

    top: RGB
    top_secondary: RGB
    top_pattern: str
    long_sleeves: bool
    jacket: RGB | None
    bottom: RGB
    bottom_style: str
    shoes: RGB
    hat: RGB | None
    bag: RGB | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _clip_rgb(values: np.ndarray) -> RGB:
    v = np.clip(np.rint(values), 0, 255).astype(int)
    return int(v[0]), int(v[1]), int(v[2])


def jitter_colour(base: RGB, rng: np.random.Generator, amount: float = 18.0) -> RGB:
    """``base`` plus per-channel Gaussian jitter of std ``amount`` (0-255 scale)."""
    return _clip_rgb(np.asarray(base, dtype=np.float64) + rng.normal(0.0, amount, 3))


def colour_distance(a: RGB, b: RGB) -> float:
    """Perceptual-ish distance: Euclidean in RGB plus a hue term for saturated colours."""
    rgb = float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))
    ha, sa, _ = colorsys.rgb_to_hsv(*(c / 255 for c in a))
    hb, sb, _ = colorsys.rgb_to_hsv(*(c / 255 for c in b))
    dh = min(abs(ha - hb), 1 - abs(ha - hb)) * min(sa, sb)
    return rgb + 300.0 * dh


def sample_identity(pid: int, rng: np.random.Generator) -> Identity:
    """Draw one person's fixed traits."""
    tone = rng.beta(1.6, 1.6)
    skin = _clip_rgb(np.add(np.multiply(SKIN_LIGHT, 1 - tone), np.multiply(SKIN_DARK, tone)) + rng.normal(0, 6, 3))
    style = HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))]
    palette = HAIR_DYED if rng.random() < DYED_HAIR_P else HAIR_NATURAL
    hair = jitter_colour(palette[int(rng.integers(len(palette)))], rng, 10.0)
    return Identity(
        pid=pid,
        height=float(np.clip(rng.normal(1.71, 0.10), 1.48, 1.98)),
        build=float(rng.uniform(0.72, 1.5)),
        leg_ratio=float(rng.uniform(0.44, 0.53)),
        shoulder_ratio=float(rng.uniform(0.21, 0.27)),
        hip_ratio=float(rng.uniform(0.16, 0.22)),
        head_ratio=float(rng.uniform(0.85, 1.2)),
        arm_ratio=float(rng.uniform(0.40, 0.47)),
        stride=float(rng.uniform(0.22, 0.50)),
        cadence=float(rng.uniform(0.55, 1.05)),
        arm_swing=float(rng.uniform(0.10, 0.50)),
        bounce=float(rng.uniform(0.005, 0.035)),
        lean=float(rng.uniform(-0.04, 0.16)),
        skin=skin,
        hair=hair,
        hair_style=style,
    )


def _clothing_colour(rng: np.random.Generator, avoid: list[RGB], min_distance: float) -> RGB:
    """A clothing colour at least ``min_distance`` from every colour in ``avoid`` (best of 50)."""
    best: RGB = (0, 0, 0)
    best_d = -1.0
    for _ in range(50):
        c = jitter_colour(CLOTHING_BASE[int(rng.integers(len(CLOTHING_BASE)))], rng)
        d = min((colour_distance(c, a) for a in avoid), default=float("inf"))
        if d >= min_distance:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def sample_outfit(rng: np.random.Generator, previous: Outfit | None = None, min_distance: float = 120.0) -> Outfit:
    """Draw an outfit; with ``previous`` (the other session's outfit) the top, jacket and bottom
    colours are kept at least ``min_distance`` away from all of its main colours."""
    avoid: list[RGB] = []
    if previous is not None:
        avoid = [previous.top, previous.bottom] + ([previous.jacket] if previous.jacket else [])
    top = _clothing_colour(rng, avoid, min_distance)
    secondary = _clothing_colour(rng, [top], 90.0)
    jacket = _clothing_colour(rng, [*avoid, top], min_distance) if rng.random() < 0.3 else None
    bottom = _clothing_colour(rng, avoid, min_distance)
    return Outfit(
        top=top,
        top_secondary=secondary,
        top_pattern=TOP_PATTERNS[int(rng.integers(len(TOP_PATTERNS)))],
        long_sleeves=bool(rng.random() < 0.5),
        jacket=jacket,
        bottom=bottom,
        bottom_style=BOTTOM_STYLES[int(rng.integers(len(BOTTOM_STYLES)))],
        shoes=jitter_colour(CLOTHING_BASE[int(rng.integers(3))], rng, 12.0),
        hat=_clothing_colour(rng, [], 0.0) if rng.random() < 0.2 else None,
        bag=_clothing_colour(rng, [], 0.0) if rng.random() < 0.3 else None,
    )
