"""A dataset root as the engine sees it: training tracklets and evaluation cases, for any layout.

Layouts (``model.data`` loaders):

- ``detreidx``: ``train/`` plus the three cases A->G, G->A, A->A (SynthXFD uses it too);
- ``mars``: ``bbox_train/`` and one case ``Q->G`` (query_IDX vs the other test tracks);
- ``plain``: ``train/`` and, when both exist, one case ``Q->G`` from ``query/`` and ``gallery/``.

``auto`` picks ``mars`` when ``bbox_test/`` or ``info/`` exists, ``detreidx`` when ``train/`` or a
case folder exists next to no other split folder, else ``plain``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from model.data import CASES, DatasetError, Tracklet, load_detreidx, load_mars, load_plain
from model.data.detreidx import CaseSplit

LAYOUTS: tuple[str, ...] = ("auto", "detreidx", "mars", "plain")

# Queries ranked against a gallery; ``label`` is short (``A->G``), ``challenge_name`` is the
# submission CSV's case string (``Case 1: Aerial to Ground``). One record type for every layout:
# the DetReIDX loader's own.
EvalCase = CaseSplit


@dataclass
class ReIDData:
    """What the trainer and evaluator need from a root."""

    root: Path
    layout: str
    train: list[Tracklet]
    num_train_pids: int
    cases: list[EvalCase] = field(default_factory=list)


def detect_layout(root: Path) -> str:
    """The layout of ``root`` by the rule in the module docstring (``root`` must exist)."""
    if (root / "bbox_test").is_dir() or (root / "info").is_dir():
        return "mars"
    if any((root / name).is_dir() for name in CASES):
        return "detreidx"
    if (root / "query").is_dir() or (root / "gallery").is_dir():
        return "plain"
    return "detreidx"


def load_reid_data(root: str | Path, layout: str = "auto", progress: bool = False) -> ReIDData:
    """Load ``root`` in ``layout``; ``DatasetError`` (naming the path) when it is missing or malformed."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder")
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "detreidx":
        ds = load_detreidx(root, progress=progress)
        cases = list(ds.cases.values())
        return ReIDData(root, layout, ds.train, ds.num_train_pids, cases)
    if layout == "mars":
        ds = load_mars(root)
        return ReIDData(root, layout, ds.train, ds.num_train_pids,
                        [EvalCase("query_gallery", "Q->G", "Query to Gallery", ds.query, ds.gallery)])
    plain = load_plain(root, progress=progress)
    cases = []
    if "query" in plain.splits and "gallery" in plain.splits:
        cases.append(EvalCase("query_gallery", "Q->G", "Query to Gallery", plain.splits["query"],
                              plain.splits["gallery"]))
    return ReIDData(root, layout, plain.splits.get("train", []), len(plain.train_pid_map), cases)


def require_train(data: ReIDData) -> None:
    """``DatasetError`` unless ``data`` has training tracklets of at least two identities."""
    if not data.train:
        raise DatasetError(f"{data.root}: no training tracklets found (layout {data.layout}; expected a train split)")
    if data.num_train_pids < 2:
        raise DatasetError(f"{data.root}: training needs at least 2 identities, found {data.num_train_pids}")


def require_cases(data: ReIDData) -> None:
    """``DatasetError`` unless ``data`` has at least one evaluation case with queries and gallery."""
    if not data.cases:
        raise DatasetError(
            f"{data.root}: no evaluation case found (layout {data.layout}; expected "
            + ("case1_aerial_to_ground/{query,gallery} or another case folder" if data.layout == "detreidx"
               else "query/ and gallery/")
            + ")"
        )
    for case in data.cases:
        if not case.query or not case.gallery:
            raise DatasetError(f"{data.root}: case {case.name} has {len(case.query)} query and "
                               f"{len(case.gallery)} gallery tracklets; both must be non-empty")


def tracklet_key(t: Tracklet) -> str:
    """A key naming one tracklet record uniquely within a root: ``split/pid/tracklet_id``."""
    split = t.metadata.get("split", "")
    pid = t.metadata.get("original_pid", t.pid)
    return f"{split}/{pid}/{t.tracklet_id}"


@dataclass(frozen=True)
class SplitSummary:
    """Counts a user checks before a long run: what the trainer will actually see."""

    identities: int
    tracklets: int
    frames: int
    single_frame_tracklets: int

    @property
    def single_frame_share(self) -> float:
        return self.single_frame_tracklets / self.tracklets if self.tracklets else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {"identities": self.identities, "tracklets": self.tracklets, "frames": self.frames,
                "single_frame_tracklets": self.single_frame_tracklets,
                "single_frame_share": round(self.single_frame_share, 4)}

    def describe(self) -> str:
        return (f"{self.identities:,} identities, {self.tracklets:,} tracklets, {self.frames:,} frames "
                f"({self.frames / max(self.tracklets, 1):.1f} per tracklet; "
                f"{100 * self.single_frame_share:.0f}% of tracklets are a single frame)")


def summarize(tracklets: list[Tracklet]) -> SplitSummary:
    """Identity, tracklet and frame counts of ``tracklets``."""
    return SplitSummary(
        identities=len({t.metadata.get("original_pid", t.pid) for t in tracklets}),
        tracklets=len(tracklets),
        frames=sum(t.num_frames for t in tracklets),
        single_frame_tracklets=sum(t.num_frames == 1 for t in tracklets),
    )


def outfit_classes(train: list[Tracklet]) -> tuple[list[Tracklet], int]:
    """``train`` relabelled so that each (person, session) pair is one class ``0..C-1``, numbered in
    order of (pid, session); returns the tracklets and C. A session is one set of clothes (the
    DetReIDX / SynthXFD capture days), so these classes ask for same-outfit re-identification;
    tracklets without a session form one class per person."""
    keys = sorted({(t.pid, t.session) for t in train}, key=lambda k: (k[0], "" if k[1] is None else str(k[1])))
    label = {k: i for i, k in enumerate(keys)}
    return [dataclasses.replace(t, pid=label[(t.pid, t.session)]) for t in train], len(keys)
