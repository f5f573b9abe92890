"""A walking articulated person as a list of 3D primitives.

Body frame: x to the person's right, y forward (walking direction), z up, metres, feet on
z = 0. Primitives are spheres (head, hands), capsules (limbs, neck, feet, hair) and convex
hexahedra (torso slabs, skirt, backpack), enough for a recognisable figure from any pitch: a
side view shows the gait, a top view mostly head, hair and shoulders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model.data.synth.identity import RGB, Identity, Outfit

# Hexahedron corner order: bottom ring then top ring, each (-x,-y), (+x,-y), (+x,+y), (-x,+y).
HEXA_FACES: tuple[tuple[int, int, int, int], ...] = (
    (0, 1, 2, 3),
    (4, 5, 6, 7),
    (3, 2, 6, 7),
    (0, 1, 5, 4),
    (1, 2, 6, 5),
    (0, 3, 7, 4),
)


@dataclass(frozen=True)
class Part:
    """One primitive. ``points``: sphere ``[1, 3]`` centre, capsule ``[2, 3]`` ends, hexa ``[8, 3]``."""

    kind: str
    colour: RGB
    points: np.ndarray
    radius: float = 0.0


def hexa(center: np.ndarray, x_half: tuple[float, float], y_half: tuple[float, float], z_range: tuple[float, float],
         y_shift_top: float = 0.0) -> np.ndarray:
    """Corners ``[8, 3]`` of an axis-aligned frustum-like box.

    ``x_half``/``y_half`` are (bottom, top) half-widths; ``z_range`` the (bottom, top) heights
    relative to ``center``; ``y_shift_top`` leans the top ring forward.
    """
    corners = []
    for ring, z in enumerate(z_range):
        xh, yh = x_half[ring], y_half[ring]
        dy = y_shift_top if ring == 1 else 0.0
        for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            corners.append((sx * xh, sy * yh + dy, z))
    return np.asarray(corners, dtype=np.float64) + center


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _torso_parts(
    outfit: Outfit, base: np.ndarray, hw: float, sw: float, td: float, length: float, lean_dy: float
) -> list[Part]:
    """Torso as slabs carrying the outfit's pattern and optional open jacket."""
    parts: list[Part] = []

    def slab(colour: RGB, x0: float, x1: float, y0: float, y1: float, t0: float, t1: float) -> Part:
        # (x0, x1) and (y0, y1) are fractions of the half-width/half-depth; t0, t1 of the length.
        corners = []
        for t in (t0, t1):
            half_w = _lerp(hw, sw, t) / 2
            z = t * length
            dy = t * lean_dy
            for fx, fy in ((x0, y0), (x1, y0), (x1, y1), (x0, y1)):
                corners.append((fx * half_w, fy * td / 2 + dy, z))
        return Part("hexa", colour, np.asarray(corners) + base)

    if outfit.top_pattern == "stripes":
        bands = [(i / 5, (i + 1) / 5, outfit.top if i % 2 == 0 else outfit.top_secondary) for i in range(5)]
        inner = [(-1.0, 1.0, t0, t1, c) for t0, t1, c in bands]
    elif outfit.top_pattern == "two_tone":
        inner = [(-1.0, 1.0, 0.0, 0.55, outfit.top), (-1.0, 1.0, 0.55, 1.0, outfit.top_secondary)]
    elif outfit.top_pattern == "split":
        inner = [(-1.0, 0.0, 0.0, 1.0, outfit.top), (0.0, 1.0, 0.0, 1.0, outfit.top_secondary)]
    else:
        inner = [(-1.0, 1.0, 0.0, 1.0, outfit.top)]

    if outfit.jacket is None:
        for x0, x1, t0, t1, c in inner:
            parts.append(slab(c, x0, x1, -1.0, 1.0, t0, t1))
    else:
        # Open jacket: full-width back, two front panels, the top showing in a central strip.
        parts.append(slab(outfit.jacket, -1.0, 1.0, -1.0, 0.4, 0.0, 1.0))
        parts.append(slab(outfit.jacket, -1.0, -0.35, 0.4, 1.0, 0.0, 1.0))
        parts.append(slab(outfit.jacket, 0.35, 1.0, 0.4, 1.0, 0.0, 1.0))
        for _x0, _x1, t0, t1, c in inner:
            parts.append(slab(c, -0.35, 0.35, 0.4, 1.0, t0, t1))
    return parts


def body_parts(ident: Identity, outfit: Outfit, phase: float) -> list[Part]:
    """Primitives of ``ident`` wearing ``outfit`` at gait ``phase`` (radians; 2*pi per stride)."""
    h = ident.height
    b = ident.build
    head_r = 0.062 * h * ident.head_ratio
    leg = ident.leg_ratio * h
    neck = 0.03 * h
    shoulder_z_rel = h - 2 * head_r - neck
    torso_len = shoulder_z_rel - leg
    sw = ident.shoulder_ratio * h * (0.8 + 0.2 * b)
    hw = ident.hip_ratio * h * (0.7 + 0.3 * b)
    td = 0.12 * h * (0.6 + 0.4 * b)
    r_thigh, r_shin = 0.042 * h * b**0.8, 0.030 * h * b**0.8
    r_upper, r_fore = 0.026 * h * b**0.8, 0.021 * h * b**0.8
    thigh, shin = 0.53 * leg, 0.47 * leg
    arm = ident.arm_ratio * h
    upper, fore = 0.55 * arm, 0.45 * arm
    foot_len, r_foot = 0.13 * h, 0.022 * h

    def leg_joints(side: float, leg_phase: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        swing = ident.stride * math.sin(leg_phase)
        knee_flex = 0.08 + 1.1 * ident.stride * max(0.0, math.cos(leg_phase))
        hip = np.array([side * hw / 2, 0.0, 0.0])
        knee = hip + thigh * np.array([0.0, math.sin(swing), -math.cos(swing)])
        shin_angle = swing - knee_flex
        ankle = knee + shin * np.array([0.0, math.sin(shin_angle), -math.cos(shin_angle)])
        toe = ankle + np.array([0.0, foot_len * 0.8, -0.02 * h])
        return hip, knee, ankle, toe

    legs = {side: leg_joints(side, phase + (0.0 if side < 0 else math.pi)) for side in (-1.0, 1.0)}
    # Put the lower foot on the ground: the pelvis height (and its bounce) follows from the legs.
    lowest = min(min(j[2][2], j[3][2]) for j in legs.values()) - r_foot
    pelvis_z = -lowest - ident.bounce * math.sin(phase) ** 2
    lift = np.array([0.0, 0.0, pelvis_z])
    parts: list[Part] = []

    lower_leg_colour = outfit.bottom if outfit.bottom_style == "trousers" else ident.skin
    thigh_colour = outfit.bottom if outfit.bottom_style != "skirt" else ident.skin
    for hip, knee, ankle, toe in legs.values():
        hip, knee, ankle, toe = hip + lift, knee + lift, ankle + lift, toe + lift
        parts.append(Part("capsule", thigh_colour, np.stack([hip, knee]), r_thigh))
        parts.append(Part("capsule", lower_leg_colour, np.stack([knee, ankle]), r_shin))
        heel = ankle - np.array([0.0, 0.03 * h, 0.0])
        parts.append(Part("capsule", outfit.shoes, np.stack([heel, toe]), r_foot))

    pelvis = np.array([0.0, 0.0, pelvis_z])
    lean_dy = math.sin(ident.lean) * torso_len
    # Slight overlap with the thighs so no gap shows at the hips.
    torso_base = pelvis - np.array([0.0, 0.0, 0.04 * h])
    torso_length = torso_len + 0.04 * h
    parts += _torso_parts(outfit, torso_base, hw * 1.15, sw, td, torso_length, lean_dy)
    if outfit.bottom_style == "skirt":
        knee_z = float(np.mean([j[1][2] for j in legs.values()])) + pelvis_z
        parts.append(
            Part(
                "hexa",
                outfit.bottom,
                hexa(pelvis, (hw * 0.75, hw * 0.62), (td * 0.7, td * 0.5), (knee_z - pelvis_z + 0.03 * h, 0.02 * h)),
            )
        )
    else:
        # Hips/seat in trouser colour so the waist reads as clothing.
        parts.append(Part("hexa", outfit.bottom, hexa(pelvis, (hw * 0.6, hw * 0.62), (td * 0.45, td * 0.48), (-0.06 * h, 0.03 * h))))

    shoulder_c = pelvis + np.array([0.0, lean_dy, torso_len])
    sleeve = outfit.jacket if outfit.jacket is not None else outfit.top
    fore_colour = sleeve if (outfit.long_sleeves or outfit.jacket is not None) else ident.skin
    for side in (-1.0, 1.0):
        leg_phase = phase + (0.0 if side < 0 else math.pi)
        swing = -ident.arm_swing * math.sin(leg_phase)
        flex = 0.2 + 0.6 * max(0.0, math.sin(-leg_phase)) * ident.arm_swing
        shoulder = shoulder_c + np.array([side * (sw / 2 - r_upper * 0.6), 0.0, -r_upper])
        out = side * 0.06
        elbow = shoulder + upper * np.array([out, math.sin(swing), -math.cos(swing)])
        fore_angle = swing + flex
        wrist = elbow + fore * np.array([out * 0.5, math.sin(fore_angle), -math.cos(fore_angle)])
        parts.append(Part("capsule", sleeve, np.stack([shoulder, elbow]), r_upper))
        parts.append(Part("capsule", fore_colour, np.stack([elbow, wrist]), r_fore))
        parts.append(Part("sphere", ident.skin, wrist[None, :], r_fore * 1.25))

    neck_top = shoulder_c + np.array([0.0, 0.01 * h, neck + 0.2 * head_r])
    parts.append(Part("capsule", ident.skin, np.stack([shoulder_c, neck_top]), 0.028 * h))
    head_c = shoulder_c + np.array([0.0, 0.015 * h, neck + head_r])
    parts.append(Part("sphere", ident.skin, head_c[None, :], head_r))
    parts += _hair_parts(ident, head_c, head_r, shoulder_c, td)
    if outfit.hat is not None:
        parts.append(Part("sphere", outfit.hat, (head_c + np.array([0.0, 0.0, 0.45 * head_r]))[None, :], 0.9 * head_r))
    if outfit.bag is not None:
        back = shoulder_c + np.array([0.0, -td / 2 - 0.04 * h, -0.45 * torso_len])
        parts.append(Part("hexa", outfit.bag, hexa(back, (sw * 0.33, sw * 0.3), (0.04 * h, 0.035 * h), (-0.3 * torso_len, 0.3 * torso_len))))
    return parts


def _hair_parts(ident: Identity, head_c: np.ndarray, head_r: float, shoulder_c: np.ndarray, td: float) -> list[Part]:
    style = ident.hair_style
    if style == "bald":
        return []
    up_back = np.array([0.0, -0.18 * head_r, 0.22 * head_r])
    radius = {"curly": 1.2, "afro": 1.55}.get(style, 1.0) * head_r
    parts = [Part("sphere", ident.hair, (head_c + up_back)[None, :], radius)]
    if style == "bun":
        bun = head_c + np.array([0.0, -0.55 * head_r, 0.95 * head_r])
        parts.append(Part("sphere", ident.hair, bun[None, :], 0.5 * head_r))
    if style == "long":
        top = head_c + np.array([0.0, -0.45 * head_r, 0.0])
        bottom = shoulder_c + np.array([0.0, -td * 0.45, -0.5 * head_r])
        parts.append(Part("capsule", ident.hair, np.stack([top, bottom]), 0.8 * head_r))
    elif style == "ponytail":
        top = head_c + np.array([0.0, -1.0 * head_r, 0.1 * head_r])
        bottom = top + np.array([0.0, -0.25 * head_r, -1.3 * head_r])
        parts.append(Part("capsule", ident.hair, np.stack([top, bottom]), 0.35 * head_r))
    return parts
