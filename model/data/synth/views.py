"""Camera views of SynthXFD: three ground cameras and the 18 DetReIDX UAV points.

A view fixes the platform, the line-of-sight pitch (elevation below horizontal) and how many
pixels a metre covers at the person (``focal / range``). The UAV points are those of DetReIDX
(altitude, horizontal distance, pitch): pitch 30/60 deg with distances 10-120 m, and 90 deg
straight down from 10-120 m, so crops range from ~110 px tall to a few pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

AERIAL_FOCAL_PX = 800.0
GROUND_FOCAL_PX = 700.0

# (altitude m, horizontal distance m, pitch deg) - the DetReIDX UAV capture points.
UAV_POINTS: tuple[tuple[float, float, float], ...] = (
    (5.8, 10.0, 30.0), (11.5, 20.0, 30.0), (17.3, 30.0, 30.0), (23.1, 40.0, 30.0), (40.0, 80.0, 30.0), (60.0, 120.0, 30.0),
    (15.0, 10.0, 60.0), (30.0, 20.0, 60.0), (45.0, 30.0, 60.0), (60.0, 40.0, 60.0), (75.0, 80.0, 60.0), (90.0, 120.0, 60.0),
    (10.0, 0.0, 90.0), (20.0, 0.0, 90.0), (30.0, 0.0, 90.0), (40.0, 0.0, 90.0), (80.0, 0.0, 90.0), (120.0, 0.0, 90.0),
)  # fmt: skip


@dataclass(frozen=True)
class View:
    """One camera position.

    ``camera`` is the position id (ground 0-2, UAV point k -> 10 + k; the manifest adds
    ``100 * session``); ``uav_field`` the
    value written in the frame name's camera field (1 = oblique gimbal, 2 = nadir); headings are
    the person's walking directions relative to the camera (radians, 0 = walking away) from
    which a tracklet draws, with ``heading_jitter`` added.
    """

    name: str
    platform: str
    camera: int
    pitch_deg: float
    range_m: float
    headings: tuple[float, ...]
    heading_jitter: float
    altitude: float | None = None
    distance: float | None = None
    uav_field: int | None = None
    point: int | None = None

    @property
    def px_per_m(self) -> float:
        focal = AERIAL_FOCAL_PX if self.platform == "aerial" else GROUND_FOCAL_PX
        return focal / self.range_m


GROUND_VIEWS: tuple[View, ...] = (
    View("ground-near", "ground", 0, 8.0, 11.0, (0.0, math.pi), 0.35),
    View("ground-side", "ground", 1, 4.0, 16.0, (math.pi / 2, -math.pi / 2), 0.3),
    View("ground-oblique", "ground", 2, 14.0, 22.0, (math.pi / 4, 3 * math.pi / 4, -math.pi / 4, -3 * math.pi / 4), 0.3),
)


def _aerial_view(point: int, altitude: float, distance: float, pitch: float) -> View:
    return View(
        name=f"aerial-P{point:02d}",
        platform="aerial",
        camera=10 + point,
        pitch_deg=pitch,
        range_m=math.hypot(altitude, distance),
        headings=(0.0,),
        heading_jitter=math.pi,  # any walking direction under a UAV
        altitude=altitude,
        distance=distance,
        uav_field=2 if pitch >= 90.0 else 1,
        point=point,
    )


AERIAL_VIEWS: tuple[View, ...] = tuple(_aerial_view(i + 1, *p) for i, p in enumerate(UAV_POINTS))
ALL_VIEWS: tuple[View, ...] = GROUND_VIEWS + AERIAL_VIEWS


def view_by_name(name: str) -> View:
    for v in ALL_VIEWS:
        if v.name == name:
            return v
    raise KeyError(f"unknown view {name!r}; known: {[v.name for v in ALL_VIEWS]}")
