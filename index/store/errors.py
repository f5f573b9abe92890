"""Exceptions raised by the gallery stores.

The service maps these to HTTP answers without knowing which backend is in use, so backend
errors (redis connection failures, SQLite schema problems) are translated into this family.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error a store raises on purpose."""


class InvalidRecord(StoreError, ValueError):
    """A record, frame list or argument is malformed; the message names the field."""


class FingerprintMismatch(StoreError):
    """A descriptor was made by a different checkpoint than the one the gallery was built with."""

    def __init__(self, gallery_fingerprint: str, descriptor_fingerprint: str) -> None:
        self.gallery_fingerprint = gallery_fingerprint
        self.descriptor_fingerprint = descriptor_fingerprint
        super().__init__(
            f"gallery was built with checkpoint {gallery_fingerprint}; descriptor made with "
            f"{descriptor_fingerprint}; re-embed with `sasreid reembed`"
        )


class DimensionMismatch(StoreError):
    """A descriptor's length differs from the gallery's descriptor dimension."""

    def __init__(self, gallery_dim: int, descriptor_dim: int, what: str = "descriptor") -> None:
        self.gallery_dim = gallery_dim
        self.descriptor_dim = descriptor_dim
        super().__init__(
            f"gallery descriptors have dimension {gallery_dim}; {what} has dimension {descriptor_dim}; "
            "re-embed with `sasreid reembed` if the checkpoint changed"
        )


class TrackletConflict(StoreError):
    """A tracklet id is already stored with different content (or a batch repeats an id)."""

    def __init__(self, tracklet_id: str, reason: str) -> None:
        self.tracklet_id = tracklet_id
        super().__init__(f"tracklet {tracklet_id!r}: {reason}")


class TrackletNotFound(StoreError, KeyError):
    """An operation needs a tracklet that is not stored."""

    def __init__(self, tracklet_id: str) -> None:
        self.tracklet_id = tracklet_id
        super().__init__(tracklet_id)

    def __str__(self) -> str:
        # KeyError's str() is the repr of its argument; say what is missing instead.
        return f"tracklet {self.tracklet_id!r} is not stored"


class JobExists(StoreError):
    """A job id is already stored."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id!r} already exists")


class StoreUnavailable(StoreError):
    """The backing database cannot be reached (connection refused, timeout)."""


class ChangesTrimmed(StoreError):
    """A change-feed reader asked for changes the store no longer retains (it fell further behind
    than the retention bound), or for a position past the feed's head (the store was replaced).
    The reader cannot catch up change by change: it must reconcile with the store's contents."""

    def __init__(self, position: int, oldest: int | None, head: int) -> None:
        self.position = position
        self.oldest = oldest
        self.head = head
        if position > head:
            why = f"is past the feed's head {head} (the store was emptied or replaced)"
        else:
            kept = f"changes {oldest}..{head}" if oldest is not None else "no changes"
            why = f"is older than the retained window ({kept} are kept)"
        super().__init__(f"change-feed position {position} {why}; reconcile with the store instead")


class SchemaVersionError(StoreError):
    """The database was written by a newer (or unknown) schema version of this package."""


class StoreFull(StoreError):
    """The store has no room for the write: disk full (SQLite ``SQLITE_FULL``), Redis over its
    ``maxmemory`` (OOM). Nothing of the failed write was applied."""


class StoreReadOnly(StoreUnavailable):
    """The store refuses writes: a read-only database file or a Redis read-only replica, or Redis
    refusing writes because it cannot persist (MISCONF). Reads still work."""


class StoreBusy(StoreUnavailable):
    """Another connection held the database lock longer than the busy timeout (``database is
    locked``); retrying later may succeed."""
