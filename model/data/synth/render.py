"""Rendering one SynthXFD frame: projection, painter's drawing, and capture degradations.

Camera model: orthographic projection along a line of sight pitched ``pitch`` below
horizontal (the person is small relative to the range, so perspective within the body is
negligible); scale ``px_per_m`` from the view's range. Pitch compresses the vertical extent
(``height * cos(pitch) + depth * sin(pitch)``): at 90 deg the person is seen from above, mostly
head, hair and shoulders. The figure is drawn supersampled and box-filtered down to its native
crop size, then degraded: defocus/atmospheric blur, motion blur, illumination, sensor noise and
JPEG compression.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from model.data.synth.body import HEXA_FACES, Part, body_parts
from model.data.synth.identity import RGB, Identity, Outfit

MIN_CROP_PX = 6


@dataclass(frozen=True)
class Occluder:
    """An object in front of the person, in crop-relative coordinates (fractions of the crop)."""

    kind: str
    colour: RGB
    box: tuple[float, float, float, float]
    drift: tuple[float, float]


@dataclass(frozen=True)
class Capture:
    """Everything fixed for one tracklet's frames except the gait phase."""

    pitch_deg: float
    heading: float
    px_per_m: float
    background: RGB
    background_alt: RGB
    ground_view: bool
    sun: tuple[float, float, float] | None
    gain: tuple[float, float, float]
    blur_sigma: float
    motion: tuple[float, float]
    noise_sigma: float
    jpeg_quality: int
    occluder: Occluder | None
    margin: float


def camera_axes(pitch_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World-frame (right, up, forward) unit vectors of a camera pitched down by ``pitch_deg``."""
    t = math.radians(pitch_deg)
    right = np.array([1.0, 0.0, 0.0])
    up = np.array([0.0, math.sin(t), math.cos(t)])
    forward = np.array([0.0, math.cos(t), -math.sin(t)])
    return right, up, forward


def rotation_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _shade(colour: RGB, factor: float) -> RGB:
    return (
        int(min(255, colour[0] * factor)),
        int(min(255, colour[1] * factor)),
        int(min(255, colour[2] * factor)),
    )


def _shadow_parts(parts: list[Part], sun: np.ndarray) -> list[Part]:
    """Flatten every part onto the ground plane along the sun direction (``sun`` points to the sun)."""
    out = []
    for p in parts:
        pts = p.points - np.outer(p.points[:, 2] / sun[2], sun)
        out.append(Part(p.kind, (0, 0, 0), pts, p.radius))
    return out


def _hull(points: np.ndarray) -> list[tuple[float, float]]:
    """Convex hull (monotone chain) of 2D points ``[N, 2]``, counter-clockwise."""
    pts = sorted({(float(x), float(y)) for x, y in points})
    if len(pts) <= 2:
        return pts

    def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, float]] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


class _Projector:
    """Maps world points to internal canvas pixels for one frame."""

    def __init__(self, pitch_deg: float, scale: float, origin: tuple[float, float]) -> None:
        self.right, self.up, self.forward = camera_axes(pitch_deg)
        self.scale = scale
        self.origin = origin

    def uv(self, pts: np.ndarray) -> np.ndarray:
        """``[N, 3]`` world -> ``[N, 2]`` image-plane metres (u right, v up)."""
        return np.stack([pts @ self.right, pts @ self.up], axis=1)

    def px(self, pts: np.ndarray) -> np.ndarray:
        uv = self.uv(pts)
        return np.stack([(uv[:, 0] - self.origin[0]) * self.scale, (self.origin[1] - uv[:, 1]) * self.scale], axis=1)

    def depth(self, pts: np.ndarray) -> float:
        return float((pts @ self.forward).mean())


def _extent(parts: list[Part], proj: _Projector) -> tuple[float, float, float, float]:
    """Image-plane bounding box (u0, v0, u1, v1) in metres, radii included."""
    u0 = v0 = math.inf
    u1 = v1 = -math.inf
    for p in parts:
        uv = proj.uv(p.points)
        r = p.radius
        u0, v0 = min(u0, uv[:, 0].min() - r), min(v0, uv[:, 1].min() - r)
        u1, v1 = max(u1, uv[:, 0].max() + r), max(v1, uv[:, 1].max() + r)
    return u0, v0, u1, v1


def _draw_part(draw: ImageDraw.ImageDraw, part: Part, proj: _Projector, flat: RGB | None, light: np.ndarray) -> None:
    xy = proj.px(part.points)
    r = part.radius * proj.scale
    colour = flat if flat is not None else part.colour
    if part.kind == "sphere":
        x, y = xy[0]
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    elif part.kind == "capsule":
        (x0, y0), (x1, y1) = xy
        dx, dy = x1 - x0, y1 - y0
        n = math.hypot(dx, dy)
        if n > 1e-6:
            ox, oy = -dy / n * r, dx / n * r
            draw.polygon([(x0 + ox, y0 + oy), (x1 + ox, y1 + oy), (x1 - ox, y1 - oy), (x0 - ox, y0 - oy)], fill=colour)
        draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=colour)
        draw.ellipse((x1 - r, y1 - r, x1 + r, y1 + r), fill=colour)
    elif part.kind == "hexa":
        if flat is not None:
            draw.polygon(_hull(xy), fill=colour)
            return
        centre = part.points.mean(axis=0)
        for face in HEXA_FACES:
            pts = part.points[list(face)]
            normal = pts.mean(axis=0) - centre
            norm = np.linalg.norm(normal)
            if norm < 1e-9 or normal @ proj.forward >= 0:
                continue  # faces turned away from the camera are hidden
            lit = 0.72 + 0.38 * max(0.0, float(normal @ light) / norm)
            draw.polygon([tuple(p) for p in xy[list(face)]], fill=_shade(colour, lit))
    else:
        raise ValueError(f"unknown part kind {part.kind!r}")


def _background(size: tuple[int, int], capture: Capture, horizon: float, rng: np.random.Generator) -> Image.Image:
    """Low-frequency textured scene behind the person (``size`` = internal (W, H))."""
    w, h = size
    coarse = (max(2, w // 12), max(2, h // 12))
    noise = rng.normal(0.0, 1.0, (coarse[1], coarse[0], 1))
    base = np.asarray(capture.background, dtype=np.float64)
    alt = np.asarray(capture.background_alt, dtype=np.float64)
    mix = np.clip(0.5 + 0.35 * noise, 0.0, 1.0)
    img = base * (1 - mix) + alt * mix
    tex = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").resize((w, h), Image.Resampling.BILINEAR)
    if capture.ground_view:
        # Upper part: wall/vegetation behind; lower part: the pavement the person stands on.
        arr = np.asarray(tex, dtype=np.float64).copy()
        row = int(np.clip(horizon, 0, h))
        arr[row:] = arr[row:] * 0.55 + np.array([120.0, 118.0, 112.0]) * 0.45
        tex = Image.fromarray(arr.astype(np.uint8), "RGB")
    return tex


def _motion_blur(arr: np.ndarray, motion: tuple[float, float]) -> np.ndarray:
    """Average of copies shifted along ``motion`` (dx, dy pixels); edges replicate."""
    length = math.hypot(*motion)
    steps = math.ceil(length)
    if steps < 1:
        return arr
    h, w = arr.shape[:2]
    pad = steps + 1
    padded = np.pad(arr, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    acc = np.zeros_like(arr)
    for i in range(steps + 1):
        t = i / steps - 0.5
        ox, oy = round(t * motion[0]), round(t * motion[1])
        acc += padded[pad + oy : pad + oy + h, pad + ox : pad + ox + w]
    return acc / (steps + 1)


def render_frame(
    identity: Identity, outfit: Outfit, phase: float, capture: Capture, frame_index: int, rng: np.random.Generator
) -> Image.Image:
    """Render one crop at its native (small) pixel size, before JPEG encoding."""
    parts = body_parts(identity, outfit, phase)
    rot = rotation_z(capture.heading)
    parts = [Part(p.kind, p.colour, p.points @ rot.T, p.radius) for p in parts]
    proj = _Projector(capture.pitch_deg, 1.0, (0.0, 0.0))
    u0, v0, u1, v1 = _extent(parts, proj)
    # Detector-style crop: margin plus per-frame jitter of the box edges.
    wm, hm = u1 - u0, v1 - v0
    jitter = rng.uniform(-0.04, 0.04, 4)
    u0 -= (capture.margin + jitter[0]) * wm
    u1 += (capture.margin + jitter[1]) * wm
    v0 -= (capture.margin * 0.6 + jitter[2]) * hm
    v1 += (capture.margin * 0.6 + jitter[3]) * hm
    s = capture.px_per_m
    out_w = max(MIN_CROP_PX, round((u1 - u0) * s))
    out_h = max(MIN_CROP_PX, round((v1 - v0) * s))
    # Recentre when the minimum size enlarged the box (tiny far-away people).
    cu, cv = (u0 + u1) / 2, (v0 + v1) / 2
    u0, v1 = cu - out_w / s / 2, cv + out_h / s / 2
    ss = int(min(8, max(2, math.ceil(96 / out_h))))
    scale = s * ss
    proj = _Projector(capture.pitch_deg, scale, (u0, v1))
    size = (out_w * ss, out_h * ss)
    ground_px = proj.px(np.zeros((1, 3)))[0, 1]
    horizon = ground_px - 0.35 * identity.height * scale * math.cos(math.radians(capture.pitch_deg))
    img = _background(size, capture, horizon, rng)
    draw = ImageDraw.Draw(img)
    light = np.array([0.3, -0.4, 0.87])
    if capture.sun is not None:
        shadow = _shade(tuple(int(c) for c in np.add(capture.background, capture.background_alt) // 2), 0.55)
        for p in _shadow_parts(parts, np.asarray(capture.sun)):
            _draw_part(draw, p, proj, shadow, light)
    for p in sorted(parts, key=lambda q: -proj.depth(q.points)):
        _draw_part(draw, p, proj, None, light)
    if capture.occluder is not None:
        _draw_occluder(draw, capture.occluder, size, frame_index)
    small = img.resize((out_w, out_h), Image.Resampling.BOX)
    return _degrade(small, capture, rng)


def _draw_occluder(draw: ImageDraw.ImageDraw, occ: Occluder, size: tuple[int, int], frame_index: int) -> None:
    w, h = size
    x0, y0, x1, y1 = occ.box
    dx, dy = occ.drift[0] * frame_index, occ.drift[1] * frame_index
    box = ((x0 + dx) * w, (y0 + dy) * h, (x1 + dx) * w, (y1 + dy) * h)
    if occ.kind == "foliage":
        draw.ellipse(box, fill=occ.colour)
    else:
        draw.rectangle(box, fill=occ.colour)


def _degrade(img: Image.Image, capture: Capture, rng: np.random.Generator) -> Image.Image:
    if capture.blur_sigma > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(capture.blur_sigma))
    arr = np.asarray(img, dtype=np.float64)
    arr = _motion_blur(arr, capture.motion)
    arr = arr * np.asarray(capture.gain)
    arr = arr + rng.normal(0.0, capture.noise_sigma, arr.shape)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    """Baseline JPEG bytes (deterministic for a given image and quality)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()
