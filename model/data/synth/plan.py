"""The SynthXFD dataset plan: identities, outfits, tracklets, frame names and the three cases.

Everything here is a pure function of the ``SynthConfig`` (seed included); rendering follows
the plan. Structure:

- pids ``1..n_train`` are training identities, the next ``test_ids`` are test identities
  (disjoint by construction).
- Each identity has two sessions (capture days) with different outfits; its
  ``tracklets_per_id`` tracklets are split between the sessions, and within a session between
  ground cameras and UAV points, so every session has both platforms. The UAV points of one
  session are distinct (up to the 18 points). A test identity gets at least two aerial
  tracklets per session (small builds add tracklets), so case 3 can hold a same-outfit positive.
- Cases (test identities only). For each non-distractor identity a query session ``q`` is
  drawn; the queries are its query-platform tracklets of session ``q`` and the gallery holds
  its gallery-platform tracklets of BOTH sessions, so every query has two kinds of positives:
  same session ``q`` (same outfit, seen from the other platform or another UAV point) and the
  other session (other outfit: only body, gait, skin and hair match).
  case1 A->G: aerial queries vs ground gallery; case2 G->A: ground vs aerial; case3 A->A:
  aerial vs aerial, where session ``q``'s aerial tracklets are split (half, rounded up, are
  queries, the rest gallery) so no tracklet is both query and gallery. A fraction of test
  identities are per-case distractors: gallery only, with every gallery-platform tracklet of
  both sessions. The manifest's session column tells the two positive kinds apart.

Camera ids (manifest): ``100 * session + view camera`` (ground 0-2, UAV point k -> 10 + k), so
a camera is one capture position on one day. Other-session positives never share the query's
camera; same-session ones are on the other platform (cases 1, 2) or at another UAV point of
that day (case 3), so no positive is same-camera junk.

Frame names follow the DetReIDX grammar of ``model.data.detreidx``:
ground ``{pid:04d}_S{session}_G{camera}_{tracklet:05d}_{frame}`` (5 fields) and aerial
``{pid:04d}_S{session}_UAV_{tracklet:05d}_P{point:02d}_{date}_{altitude}_{distance}_{pitch}_{uav}_{frame}``
(11 fields: altitude, distance, pitch at 6, 7, 8; camera field at -2). Frame numbers are not
zero-padded (``..._98``, ``..._101``), so only a natural sort orders them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from model.data.detreidx import CASES, CaseInfo
from model.data.synth.identity import Identity, Outfit, sample_identity, sample_outfit
from model.data.synth.views import AERIAL_VIEWS, GROUND_VIEWS, View, view_by_name

SESSIONS: tuple[int, int] = (1, 2)
SESSION_DATES: dict[int, str] = {1: "20240611", 2: "20240618"}
# Capture streams subsample the video: consecutive crops are this many video frames apart.
FRAME_STEP = 3
# Without --test-ids, half of the identities are test identities, but never more than this.
MAX_DEFAULT_TEST_IDS = 50
# Case 3 (A->A) splits a session's aerial tracklets into queries and same-outfit gallery items.
MIN_TEST_AERIAL_PER_SESSION = 2


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
    """The whole build: who, wearing what, filmed where, written where.

    ``case_query_sessions[case][pid]`` is the session of that case's queries of ``pid`` (query
    identities only): its gallery items of that session are same-outfit positives, the others
    clothing-changed positives.
    """

    config: SynthConfig
    identities: dict[int, Identity]
    outfits: dict[tuple[int, int], Outfit]
    train_pids: list[int]
    test_pids: list[int]
    tracklets: list[PlannedTracklet]
    case_query_pids: dict[str, list[int]]
    case_distractor_pids: dict[str, list[int]]
    case_query_sessions: dict[str, dict[int, int]]

    def outfit_of(self, t: PlannedTracklet) -> Outfit:
        """The outfit ``t`` is rendered in: its identity's outfit of its session."""
        return self.outfits[(t.pid, t.session)]


def session_views(n: int, rng: np.random.Generator) -> list[View]:
    """Views for ``n`` tracklets of one session: half ground (cameras cycled), half aerial
    (pitches 30/60/90 cycled, a random UAV point of each pitch not yet used in the session)."""
    n_ground = n // 2
    ground_order = rng.permutation(len(GROUND_VIEWS))
    views = [GROUND_VIEWS[ground_order[i % len(GROUND_VIEWS)]] for i in range(n_ground)]
    pitches = [30.0, 60.0, 90.0]
    pitch_order = rng.permutation(3)
    for i in range(n - n_ground):
        pitch = pitches[pitch_order[i % 3]]
        candidates = [v for v in AERIAL_VIEWS if v.pitch_deg == pitch]
        # Distinct points keep case 3's same-session positives off the query's camera (junk); the
        # first pick of each pitch sees all its points, so small sessions draw as they always did.
        unused = [v for v in candidates if v not in views] or candidates
        views.append(unused[int(rng.integers(len(unused)))])
    return views


def session_sizes(tracklets_per_id: int, test: bool) -> dict[int, int]:
    """Tracklets per session for one identity.

    ``session_views`` makes ``n - n // 2`` of a session's ``n`` tracklets aerial; a test
    identity needs ``MIN_TEST_AERIAL_PER_SESSION`` of them, so its sessions are topped up.
    """
    sizes = {1: (tracklets_per_id + 1) // 2, 2: tracklets_per_id // 2}
    if test:
        least = 2 * MIN_TEST_AERIAL_PER_SESSION - 1
        sizes = {s: max(n, least) for s, n in sizes.items()}
    return sizes


def plan_identity_tracklets(
    pid: int, sizes: dict[int, int], frame_range: tuple[int, int], first_number: int, seed: int
) -> list[PlannedTracklet]:
    """One identity's tracklets of both sessions, numbered from ``first_number``, no destinations."""
    rng = np.random.default_rng([seed, 4, pid])
    low, high = frame_range
    out: list[PlannedTracklet] = []
    for session in SESSIONS:
        for view in session_views(sizes[session], rng):
            out.append(
                PlannedTracklet(
                    number=first_number + len(out),
                    pid=pid,
                    session=session,
                    view=view.name,
                    num_frames=int(rng.integers(low, high + 1)),
                    first_frame=int(rng.integers(0, 2000)),
                    destinations=(),
                )
            )
    return out


def case_members(
    info: CaseInfo, tracklets: Sequence[PlannedTracklet], q_session: int | None, rng: np.random.Generator
) -> tuple[list[PlannedTracklet], list[PlannedTracklet]]:
    """``(queries, gallery)`` of one test identity in one case.

    ``q_session=None`` is a distractor: no queries. Otherwise the queries are the identity's
    query-platform tracklets of ``q_session``; when query and gallery share a platform (A->A)
    only half of them (rounded up, drawn with ``rng``) are queries and the rest stay in the
    gallery. The gallery is every gallery-platform tracklet that is not a query, of both
    sessions: same-outfit and clothing-changed positives.
    """
    queries: list[PlannedTracklet] = []
    if q_session is not None:
        queries = [t for t in tracklets if t.session == q_session and t.platform == info.query_platform]
        if info.query_platform == info.gallery_platform:
            keep = rng.permutation(len(queries))[: len(queries) - len(queries) // 2]
            queries = [queries[i] for i in sorted(keep)]
    taken = {t.number for t in queries}
    gallery = [t for t in tracklets if t.platform == info.gallery_platform and t.number not in taken]
    return queries, gallery


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

    train_set = set(train_pids)
    by_pid: dict[int, list[PlannedTracklet]] = {}
    number = 1
    for pid in pids:
        sizes = session_sizes(config.tracklets_per_id, test=pid not in train_set)
        by_pid[pid] = plan_identity_tracklets(pid, sizes, config.frame_range, number, seed)
        number += len(by_pid[pid])
    destinations: dict[int, list[str]] = {t.number: ["train"] for pid in train_pids for t in by_pid[pid]}

    case_queries: dict[str, list[int]] = {}
    case_distractors: dict[str, list[int]] = {}
    case_sessions: dict[str, dict[int, int]] = {}
    for case_index, (name, info) in enumerate(CASES.items()):
        rng = np.random.default_rng([seed, 5, case_index])
        order = [test_pids[i] for i in rng.permutation(len(test_pids))]
        n_distract = min(len(test_pids) - 1, round(config.distractor_fraction * len(test_pids)))
        queries = set(order[n_distract:])
        case_sessions[name] = {}
        for pid in test_pids:
            # Drawn for distractors too, so each identity's query session does not depend on the others'.
            q_session = int(rng.integers(1, 3))
            if pid in queries:
                case_sessions[name][pid] = q_session
            split_rng = np.random.default_rng([seed, 7, case_index, pid])
            query_ts, gallery_ts = case_members(info, by_pid[pid], case_sessions[name].get(pid), split_rng)
            for t in query_ts:
                destinations.setdefault(t.number, []).append(f"{name}/query")
            for t in gallery_ts:
                destinations.setdefault(t.number, []).append(f"{name}/gallery")
        case_queries[name] = sorted(queries)
        case_distractors[name] = sorted(order[:n_distract])

    tracklets = [
        replace(t, destinations=tuple(destinations.get(t.number, ()))) for pid in pids for t in by_pid[pid]
    ]
    return SynthPlan(
        config, identities, outfits, train_pids, test_pids, tracklets, case_queries, case_distractors, case_sessions
    )
