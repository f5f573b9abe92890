"""Value types of the gallery: index options, the per-tracklet metadata entry, search filters and
results, and the descriptor check every index applies before it accepts vectors.

Nothing here knows which vector index holds the descriptors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from index.store import Record

Aggregate = Literal["max", "mean"]
AGGREGATES: tuple[str, ...] = ("max", "mean")
# Descriptors are accepted as unit vectors when their norm is within this of 1.
NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class IndexOptions:
    """Index parameters. ``train_size`` None means ``39 * nlist`` (faiss' minimum for k-means)."""

    nlist: int = 256
    nprobe: int = 16
    train_size: int | None = None
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    tombstone_ratio: float = 0.2
    filter_expansion: int = 10

    def __post_init__(self) -> None:
        for name in ("nlist", "nprobe", "ef_construction", "ef_search", "filter_expansion"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"IndexOptions.{name} must be an int >= 1, got {value!r}")
        if isinstance(self.hnsw_m, bool) or not isinstance(self.hnsw_m, int) or self.hnsw_m < 2:
            raise ValueError(f"IndexOptions.hnsw_m must be an int >= 2, got {self.hnsw_m!r}")
        if self.train_size is not None and (
            isinstance(self.train_size, bool)
            or not isinstance(self.train_size, int)
            or self.train_size < self.nlist
        ):
            raise ValueError(
                f"IndexOptions.train_size must be None or an int >= nlist, got {self.train_size!r}"
            )
        if not (0.0 < self.tombstone_ratio <= 1.0):
            raise ValueError(f"IndexOptions.tombstone_ratio must be in (0, 1], got {self.tombstone_ratio!r}")

    @property
    def min_train(self) -> int:
        return self.train_size if self.train_size is not None else 39 * self.nlist


@dataclass(frozen=True)
class GalleryEntry:
    """Metadata kept in memory per indexed tracklet."""

    int_id: int
    tracklet_id: str
    identity: str
    camera: str | None = None
    platform: str | None = None
    session: str | None = None
    created_at: float | None = None

    @classmethod
    def from_record(cls, record: Record) -> GalleryEntry:
        if record.int_id is None:
            raise ValueError(
                f"record {record.tracklet_id!r} has no int_id: only stored records can be indexed"
            )
        return cls(
            int_id=record.int_id,
            tracklet_id=record.tracklet_id,
            identity=record.identity,
            camera=record.camera,
            platform=record.platform,
            session=record.session,
            created_at=record.created_at,
        )


@dataclass(frozen=True)
class SearchFilter:
    """Which gallery tracklets a search may return; unset fields do not filter.

    ``camera``/``platform``/``session`` keep only equal values (an item without a camera does not
    match ``camera="c1"``); ``exclude_camera`` drops items from that camera (the
    "exclude same camera" rule for a query from that camera); ``exclude_identities`` drops identities.
    ``created_from`` / ``created_to`` keep items enrolled in ``[created_from, created_to)`` (unix
    seconds; an item without a creation time does not match a time range).
    """

    platform: str | None = None
    camera: str | None = None
    session: str | None = None
    exclude_identities: frozenset[str] = field(default_factory=frozenset)
    exclude_camera: str | None = None
    created_from: float | None = None
    created_to: float | None = None

    def __post_init__(self) -> None:
        for name in ("created_from", "created_to"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            ):
                raise ValueError(f"SearchFilter.{name} must be a finite unix time or None, got {value!r}")
        if isinstance(self.exclude_identities, str):
            raise ValueError("SearchFilter.exclude_identities must be a set of identities, not a string")
        object.__setattr__(self, "exclude_identities", frozenset(self.exclude_identities))
        if self.platform is not None and self.platform not in ("aerial", "ground"):
            raise ValueError(
                f"SearchFilter.platform must be 'aerial', 'ground' or None, got {self.platform!r}"
            )

    @property
    def active(self) -> bool:
        return bool(
            self.platform is not None
            or self.camera is not None
            or self.session is not None
            or self.exclude_identities
            or self.exclude_camera is not None
            or self.created_from is not None
            or self.created_to is not None
        )

    def matches(self, entry: GalleryEntry) -> bool:
        return (
            (self.platform is None or entry.platform == self.platform)
            and (self.camera is None or entry.camera == self.camera)
            and (self.session is None or entry.session == self.session)
            and (self.exclude_camera is None or entry.camera != self.exclude_camera)
            and entry.identity not in self.exclude_identities
            and (self.created_from is None or (entry.created_at is not None and entry.created_at >= self.created_from))
            and (self.created_to is None or (entry.created_at is not None and entry.created_at < self.created_to))
        )


@dataclass(frozen=True)
class TrackletHit:
    """One gallery tracklet in a result. ``score`` orders results: the cosine, or
    ``1 - rerank_distance`` when re-ranked."""

    int_id: int
    tracklet_id: str
    identity: str
    camera: str | None
    platform: str | None
    session: str | None
    cosine: float
    score: float
    rerank_distance: float | None = None


@dataclass(frozen=True)
class IdentityHit:
    rank: int
    identity: str
    score: float
    tracklets: list[TrackletHit]


@dataclass(frozen=True)
class SearchResult:
    """``identities``: ranked identities (rank 1 first), each with its tracklets by score.
    ``tracklets``: the scored candidate pool, best first. ``exhaustive``: the candidates came from
    an exact search (exact index or the exact fallback scan)."""

    identities: list[IdentityHit]
    tracklets: list[TrackletHit]
    aggregate: str
    reranked: bool
    exhaustive: bool



def check_descriptors(x: object, dim: int, name: str, single: bool = False) -> np.ndarray:
    """Validate unit-norm descriptors; returns float32 C-contiguous [n, dim] (or [dim] if ``single``)."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(x).__name__}")
    want_ndim = 1 if single else 2
    if x.ndim != want_ndim or x.shape[-1] != dim:
        shape = f"[{dim}]" if single else f"[n, {dim}]"
        raise ValueError(f"{name} must have shape {shape}, got {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    out = np.ascontiguousarray(x, dtype=np.float32)
    if single or not out.flags.writeable:
        # Never hand a caller's (possibly read-only) buffer on to FAISS or torch.
        out = out.copy()
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains NaN or infinite values")
    flat = out.reshape(-1, dim)
    norms = np.sqrt(np.einsum("ij,ij->i", flat, flat))
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if len(bad):
        where = "" if single else f" (row {int(bad[0])})"
        raise ValueError(
            f"{name} must be L2-normalised{where}: norm {float(norms[bad[0]]):.6g} is not within "
            f"{NORM_TOLERANCE} of 1"
        )
    return out


