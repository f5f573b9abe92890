"""The SynthXFD dataset plan: identities, outfits, tracklets, frame names and the three cases.

Everything here is a pure function of the ``SynthConfig`` (seed included); rendering follows
the plan. Structure:

- pids ``1..n_train`` are training identities, the next ``test_ids`` are test identities
  (disjoint by construction).
- Each identity has two sessions (capture days) with different outfits; its
  ``tracklets_per_id`` tracklets are split between the sessions, and within a session between
  ground cameras and UAV points, so every session has both platforms.
- Cases (test identities only), for each non-distractor identity a query session ``q`` is drawn
  and the gallery comes from the other session (cross-clothing):
  case1 A->G: aerial tracklets of session q vs ground tracklets of the other session;
  case2 G->A: ground vs aerial; case3 A->A: aerial vs aerial. A fraction of test identities
  are per-case distractors: gallery only.

Camera ids (manifest): ``100 * session + view camera`` (ground 0-2, UAV point k -> 10 + k), so
a camera is one capture position on one day; query and gallery always come from different
sessions, so a same-identity gallery item never shares the query's camera (never "junk").

Frame names follow the DetReIDX grammar of ``model.data.detreidx``:
ground ``{pid:04d}_S{session}_G{camera}_{tracklet:05d}_{frame}`` (5 fields) and aerial
``{pid:04d}_S{session}_UAV_{tracklet:05d}_P{point:02d}_{date}_{altitude}_{distance}_{pitch}_{uav}_{frame}``
(11 fields: altitude, distance, pitch at 6, 7, 8; camera field at -2). Frame numbers are not
zero-padded (``..._98``, ``..._101``), so only a natural sort orders them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.data.detreidx import CASES
from model.data.synth.identity import Identity, Outfit, sample_identity, sample_outfit
from model.data.synth.views import AERIAL_VIEWS, GROUND_VIEWS, View, view_by_name

SESSIONS: tuple[int, int] = (1, 2)
SESSION_DATES: dict[int, str] = {1: "20240611", 2: "20240618"}
# Capture streams subsample the video: consecutive crops are this many video frames apart.
FRAME_STEP = 3
# Without --test-ids, half of the identities are test identities, but never more than this.
MAX_DEFAULT_TEST_IDS = 50


@dataclass(frozen=True)
class SynthConfig:
    """Size and seed of a SynthXFD build (the defaults generate in about 30 s on 2 cores).

    The default build has 350 training identities and 50 test identities: learning cues that
    survive an outfit change needs many identities (with 50 a small model memorises the outfits),
    while 50 test identities keep the evaluation quick.
    """

    ids: int = 400
    test_ids: int | None = None
    tracklets_per_id: int = 8
    frames: int = 12
    min_frames: int | None = None
    distractor_fraction: float = 0.2
    seed: int = 0

    @property
    def num_test(self) -> int:
        return min(self.ids // 2, MAX_DEFAULT_TEST_IDS) if self.test_ids is None else self.test_ids

    @property
    def num_train(self) -> int:
        return self.ids - self.num_test

    @property
    def frame_range(self) -> tuple[int, int]:
        low = self.min_frames if self.min_frames is not None else max(2, self.frames - self.frames // 4)
        return low, self.frames

    def validate(self) -> None:
        """Raise ``ValueError`` explaining the first invalid setting."""
        if self.ids < 2:
            raise ValueError(f"--ids must be >= 2 (train and test identities), got {self.ids}")
        if not 1 <= self.num_test < self.ids:
            raise ValueError(f"--test-ids must be between 1 and ids-1={self.ids - 1}, got {self.num_test}")
        if self.tracklets_per_id < 4:
            raise ValueError(
                f"--tracklets-per-id must be >= 4 (both sessions x both platforms), got {self.tracklets_per_id}"
            )
        low, high = self.frame_range
        if not 1 <= low <= high:
            raise ValueError(f"frames per tracklet must satisfy 1 <= min-frames <= frames, got {low}..{high}")
        if not 0.0 <= self.distractor_fraction < 1.0:
            raise ValueError(f"distractor fraction must be in [0, 1), got {self.distractor_fraction}")


@dataclass(frozen=True)
class PlannedTracklet:
    """One tracklet to render and the split folders it is written to."""

    number: int
    pid: int
    session: int
    view: str
    num_frames: int
    first_frame: int
    destinations: tuple[str, ...]

    @property
    def folder_name(self) -> str:
        return f"{self.pid:04d}_{self.number:05d}"

    @property
    def view_spec(self) -> View:
        return view_by_name(self.view)

    @property
    def platform(self) -> str:
        return self.view_spec.platform

    @property
    def camera(self) -> int:
        """Manifest camera id: the capture position on this session's day."""
        return 100 * self.session + self.view_spec.camera

    def frame_numbers(self) -> list[int]:
        return [self.first_frame + FRAME_STEP * i for i in range(self.num_frames)]

    def frame_name(self, frame_number: int) -> str:
        """File name of one frame (DetReIDX grammar, see module docstring)."""
        v = self.view_spec
        if v.platform == "ground":
            return f"{self.pid:04d}_S{self.session}_G{v.camera}_{self.number:05d}_{frame_number}.jpg"
        return (
            f"{self.pid:04d}_S{self.session}_UAV_{self.number:05d}_P{v.point:02d}_{SESSION_DATES[self.session]}_"
            f"{v.altitude:.1f}_{v.distance:.1f}_{v.pitch_deg:.0f}_{v.uav_field}_{frame_number}.jpg"
        )


@dataclass
class SynthPlan:
    """The whole build: who, wearing what, filmed where, written where."""

    config: SynthConfig
    identities: dict[int, Identity]
    outfits: dict[tuple[int, int], Outfit]
    train_pids: list[int]
    test_pids: list[int]
    tracklets: list[PlannedTracklet]
    case_query_pids: dict[str, list[int]]
    case_distractor_pids: dict[str, list[int]]


def session_views(n: int, rng: np.random.Generator) -> list[View]:
    """Views for ``n`` tracklets of one session: half ground (cameras cycled), half aerial
    (pitches 30/60/90 cycled, a random UAV point of each pitch)."""
    n_ground = n // 2
    ground_order = rng.permutation(len(GROUND_VIEWS))
    views = [GROUND_VIEWS[ground_order[i % len(GROUND_VIEWS)]] for i in range(n_ground)]
    pitches = [30.0, 60.0, 90.0]
    pitch_order = rng.permutation(3)
    for i in range(n - n_ground):
        pitch = pitches[pitch_order[i % 3]]
        candidates = [v for v in AERIAL_VIEWS if v.pitch_deg == pitch]
        views.append(candidates[int(rng.integers(len(candidates)))])
    return views


def make_plan(config: SynthConfig) -> SynthPlan:
    """Build the full plan (deterministic in ``config``)."""
    config.validate()
    seed = config.seed
    pids = list(range(1, config.ids + 1))
    train_pids, test_pids = pids[: config.num_train], pids[config.num_train :]
    identities = {pid: sample_identity(pid, np.random.default_rng([seed, 1, pid])) for pid in pids}
    outfits: dict[tuple[int, int], Outfit] = {}
    for pid in pids:
        first = sample_outfit(np.random.default_rng([seed, 2, pid, 1]))
        outfits[(pid, 1)] = first
        outfits[(pid, 2)] = sample_outfit(np.random.default_rng([seed, 2, pid, 2]), previous=first)

    low, high = config.frame_range
    per_session = {1: (config.tracklets_per_id + 1) // 2, 2: config.tracklets_per_id // 2}
    train_set = set(train_pids)
    raw: list[dict] = []
    for pid in pids:
        rng = np.random.default_rng([seed, 4, pid])
        for session in SESSIONS:
            for view in session_views(per_session[session], rng):
                raw.append(
                    dict(
                        number=len(raw) + 1,
                        pid=pid,
                        session=session,
                        view=view.name,
                        num_frames=int(rng.integers(low, high + 1)),
                        first_frame=int(rng.integers(0, 2000)),
                        platform=view.platform,
                        destinations=["train"] if pid in train_set else [],
                    )
                )

    case_queries: dict[str, list[int]] = {}
    case_distractors: dict[str, list[int]] = {}
    by_pid: dict[int, list[dict]] = {}
    for t in raw:
        by_pid.setdefault(t["pid"], []).append(t)
    for case_index, (name, info) in enumerate(CASES.items()):
        rng = np.random.default_rng([seed, 5, case_index])
        order = [test_pids[i] for i in rng.permutation(len(test_pids))]
        n_distract = min(len(test_pids) - 1, round(config.distractor_fraction * len(test_pids)))
        distractors = sorted(order[:n_distract])
        queries = sorted(order[n_distract:])
        for pid in test_pids:
            q_session = int(rng.integers(1, 3))
            g_session = 3 - q_session
            if pid in queries:
                for t in by_pid[pid]:
                    if t["session"] == q_session and t["platform"] == info.query_platform:
                        t["destinations"].append(f"{name}/query")
            for t in by_pid[pid]:
                if t["session"] == g_session and t["platform"] == info.gallery_platform:
                    t["destinations"].append(f"{name}/gallery")
        case_queries[name] = queries
        case_distractors[name] = distractors

    tracklets = [
        PlannedTracklet(
            number=t["number"],
            pid=t["pid"],
            session=t["session"],
            view=t["view"],
            num_frames=t["num_frames"],
            first_frame=t["first_frame"],
            destinations=tuple(t["destinations"]),
        )
        for t in raw
    ]
    return SynthPlan(config, identities, outfits, train_pids, test_pids, tracklets, case_queries, case_distractors)
