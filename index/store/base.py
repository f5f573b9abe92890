"""The store interface: the gallery's system of record, shared by the SQLite and Redis backends.

Both backends keep the same invariants, so the FAISS index can always be rebuilt from a store:

* every stored descriptor was made by the store's current checkpoint fingerprint and has the
  store's dimension (both fixed by the first write, switched only by ``replace_descriptors``);
* each tracklet has an int64 ``int_id`` from a persisted counter that is never reused, even after
  deletes (gaps are allowed);
* every write call is one transaction: it is fully applied or not at all;
* every write call that adds or removes tracklets appends, in the same transaction, one ``Change``
  per tracklet to a change feed (``changes_since``): a replica keeping an in-process view of the
  gallery (metadata, neighbour graph, a local FAISS index) learns other processes' writes from it.
  The feed has a strictly increasing sequence number in commit order and keeps the newest
  ``change_retention`` changes (trimmed by the writes themselves); a reader further behind gets
  ``ChangesTrimmed`` and reconciles with the store's contents instead.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import numpy as np

from index.store.errors import (
    ChangesTrimmed,
    DimensionMismatch,
    FingerprintMismatch,
    InvalidRecord,
    TrackletConflict,
)
from index.store.job import Job
from index.store.record import Record, validate_descriptor, validate_frames

# 2: the change feed (SQLite table ``changes``, Redis ``change_seq`` + ``changes``). A package that
# writes without feeding it must not open such a store, so the version was raised with it.
SCHEMA_VERSION = 2
# Changes kept in the feed: a replica polling every 0.25 s falls out of this window only after
# 100k writes between two polls (or a long outage); it then reconciles with the store.
DEFAULT_CHANGE_RETENTION = 100_000
MAX_CHANGES_LIMIT = 100_000
MAX_JOBS_LIMIT = 1000

ChangeOp = Literal["add", "remove"]


@dataclass(frozen=True)
class Change:
    """One entry of the change feed: tracklet ``tracklet_id`` (int id ``int_id``) was stored
    (``add``) or deleted (``remove``) by the write with sequence number ``seq``. A descriptor
    replacement is a ``remove`` then an ``add`` of the same ids (the record changed in place)."""

    seq: int
    op: ChangeOp
    tracklet_id: str
    int_id: int


@dataclass(frozen=True)
class PutResult:
    """The record as stored (with its ``int_id``) and whether this call created it."""

    record: Record
    created: bool


@dataclass(frozen=True)
class StoreInfo:
    """Store-level metadata: ``None`` until the first write fixes them."""

    fingerprint: str | None = None
    dim: int | None = None


class Store(ABC):
    """System of record for gallery tracklets. Safe to share between threads."""

    url: str

    # ---- writes -------------------------------------------------------------------------
    def put(self, record: Record, frames: Sequence[bytes] | None = None) -> PutResult:
        """Store one record (and optionally its frames, in the same transaction).

        Same ``tracklet_id`` with the same ``content_hash`` and identity returns the stored record
        (``created=False``; ``frames`` are then ignored); different content raises
        ``TrackletConflict``. Raises ``FingerprintMismatch`` / ``DimensionMismatch`` when the
        descriptor does not match the gallery.
        """
        frame_list = None if frames is None else validate_frames(frames)
        return self._put_batch(check_batch([record]), {record.tracklet_id: frame_list} if frame_list else {})[
            0
        ]

    def put_many(self, records: Sequence[Record]) -> list[PutResult]:
        """Store a batch all-or-nothing; results are in input order.

        A duplicated id inside the batch, a conflict with a stored record or a fingerprint or
        dimension mismatch raises before anything is written.
        """
        return self._put_batch(check_batch(records), {})

    @abstractmethod
    def _put_batch(self, records: list[Record], frames: dict[str, list[bytes]]) -> list[PutResult]:
        """Backend write of a batch already checked by ``check_batch``."""

    @abstractmethod
    def delete(self, tracklet_id: str) -> bool:
        """Delete a tracklet and its frames; False when it was not stored."""

    @abstractmethod
    def delete_identity(self, identity: str) -> list[str]:
        """Delete every tracklet of ``identity`` atomically; returns the deleted ids, sorted."""

    @abstractmethod
    def put_frames(self, tracklet_id: str, frames: Sequence[bytes]) -> None:
        """Replace the kept frames of a stored tracklet; raises ``TrackletNotFound``."""

    def replace_descriptors(self, new_fingerprint: str, items: Mapping[str, np.ndarray]) -> int:
        """Atomically switch the gallery to ``new_fingerprint`` with a new descriptor per tracklet.

        ``items`` maps every stored tracklet id to its new descriptor (all of one dimension, which
        may differ from the old one); ids missing from or unknown to the store raise
        ``InvalidRecord`` and nothing changes. Returns the number of descriptors replaced.
        """
        if not isinstance(new_fingerprint, str) or not new_fingerprint:
            raise InvalidRecord(f"new_fingerprint must be a non-empty string, got {new_fingerprint!r}")
        checked: dict[str, np.ndarray] = {}
        dim: int | None = None
        for tracklet_id, descriptor in items.items():
            vec = validate_descriptor(descriptor, f"descriptor of {tracklet_id!r}")
            if dim is None:
                dim = vec.shape[0]
            elif vec.shape[0] != dim:
                raise DimensionMismatch(dim, vec.shape[0], f"descriptor of {tracklet_id!r}")
            checked[tracklet_id] = vec
        return self._replace_descriptors(new_fingerprint, checked, dim)

    @abstractmethod
    def _replace_descriptors(self, fingerprint: str, items: dict[str, np.ndarray], dim: int | None) -> int:
        """Backend part of ``replace_descriptors``; must verify coverage inside its transaction."""

    # ---- change feed --------------------------------------------------------------------
    def changes_since(self, seq: int, limit: int = 1000) -> tuple[list[Change], int]:
        """The changes after position ``seq`` (oldest first, at most ``limit``) and the position to
        ask from next time (the last returned change's ``seq``, or ``seq`` when there is none).

        Start from ``change_head()`` read before loading the gallery from the store: changes
        already reflected in what was loaded come again, so applying a change must be idempotent.
        Raises ``ChangesTrimmed`` when changes after ``seq`` were already trimmed from the feed,
        or ``seq`` is past the head.
        """
        check_position(seq)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_CHANGES_LIMIT:
            raise InvalidRecord(f"limit must be an int in [1, {MAX_CHANGES_LIMIT}], got {limit!r}")
        changes, oldest, head = self._changes_since(seq, limit)
        if seq > head or (seq < head and (oldest is None or oldest > seq + 1)):
            raise ChangesTrimmed(seq, oldest, head)
        return changes, changes[-1].seq if changes else seq

    @abstractmethod
    def _changes_since(self, seq: int, limit: int) -> tuple[list[Change], int | None, int]:
        """(changes after ``seq``, oldest retained seq or None, head), read in one transaction."""

    @abstractmethod
    def change_head(self) -> int:
        """The sequence number of the newest change (0 before the first)."""

    # ---- jobs ---------------------------------------------------------------------------
    # Long-running work (index.store.job): not records, so no change feed; every write of an
    # existing job is a compare-and-set on its version.
    @abstractmethod
    def create_job(self, job: Job) -> None:
        """Store a new job; ``JobExists`` when its id is taken."""

    @abstractmethod
    def get_job(self, job_id: str) -> Job | None:
        """The stored job, or None."""

    @abstractmethod
    def list_jobs(self, limit: int = 100, unfinished: bool = False) -> list[Job]:
        """The newest ``limit`` jobs, newest first; with ``unfinished`` only those queued or
        running (what a runner polls for, without reading every finished job again)."""

    @abstractmethod
    def replace_job(self, job: Job) -> bool:
        """Store ``job`` if the stored one has version ``job.version - 1`` (atomically); False when
        another writer got there first or the job is gone."""

    @abstractmethod
    def delete_finished_jobs(self, finished_before: float, limit: int = 1000) -> int:
        """Delete up to ``limit`` succeeded or failed jobs last written (``updated_at``: when they
        finished) before ``finished_before``, oldest first; the number deleted. Queued and running
        jobs are never deleted."""

    # ---- derived data -------------------------------------------------------------------
    # Caches computed from the records (the re-ranking graph) kept next to them so every process
    # on the store can load them instead of recomputing. Not records: no change feed, no schema
    # version; a reader must verify what it loads against the records.
    @abstractmethod
    def put_blob(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name``, replacing what was there, atomically."""

    @abstractmethod
    def get_blob(self, name: str) -> bytes | None:
        """The data stored under ``name``, or None."""

    @abstractmethod
    def delete_blob(self, name: str) -> None:
        """Forget ``name`` (no error when absent)."""

    # ---- reads --------------------------------------------------------------------------
    @abstractmethod
    def get(self, tracklet_id: str) -> Record | None: ...

    @abstractmethod
    def get_identity(self, identity: str) -> list[Record]:
        """Records of one identity, in ``int_id`` order (empty when unknown)."""

    @abstractmethod
    def get_frames(self, tracklet_id: str) -> list[bytes] | None:
        """The kept frames, or None when the tracklet is unknown or has none."""

    @abstractmethod
    def list_identities(self, offset: int = 0, limit: int = 100) -> tuple[list[tuple[str, int]], int]:
        """A page of (identity, number of tracklets), sorted by identity (byte order), and the total."""

    @abstractmethod
    def count_tracklets(self) -> int: ...

    @abstractmethod
    def count_identities(self) -> int: ...

    @abstractmethod
    def iter_records(self, batch: int = 1000, after: int = -1) -> Iterator[Record]:
        """Every record with ``int_id > after`` in ``int_id`` order, read ``batch`` at a time (not
        one snapshot: records written during the iteration may or may not appear). Int ids are
        never reused and grow with every new record, so ``after`` = the last int id seen resumes
        an iteration, and a record stored since then comes after it."""

    @abstractmethod
    def int_ids(self) -> np.ndarray:
        """All stored int ids, sorted, as int64 (cheap: no descriptors are read)."""

    @abstractmethod
    def info(self) -> StoreInfo: ...

    # ---- lifecycle ----------------------------------------------------------------------
    @abstractmethod
    def ping(self) -> bool:
        """True when the backing database answers."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def check_batch(records: Sequence[Record]) -> list[Record]:
    """Checks that need no database: types, ids unique, one fingerprint and dimension per batch."""
    if isinstance(records, (str, bytes)) or not isinstance(records, Sequence):
        raise InvalidRecord("records must be a list of Record")
    out: list[Record] = []
    seen: set[str] = set()
    for i, record in enumerate(records):
        if not isinstance(record, Record):
            raise InvalidRecord(f"records[{i}] must be a Record, got {type(record).__name__}")
        if record.tracklet_id in seen:
            raise TrackletConflict(record.tracklet_id, "appears more than once in the batch")
        seen.add(record.tracklet_id)
        if out:
            if record.fingerprint != out[0].fingerprint:
                raise FingerprintMismatch(out[0].fingerprint, record.fingerprint)
            if record.dim != out[0].dim:
                raise DimensionMismatch(out[0].dim, record.dim, f"descriptor of {record.tracklet_id!r}")
        out.append(record)
    return out


def check_against_info(info: StoreInfo, records: Sequence[Record]) -> None:
    """Raise if the batch does not match the store's fingerprint or dimension."""
    if not records:
        return
    first = records[0]
    if info.fingerprint is not None and first.fingerprint != info.fingerprint:
        raise FingerprintMismatch(info.fingerprint, first.fingerprint)
    if info.dim is not None and first.dim != info.dim:
        raise DimensionMismatch(info.dim, first.dim, f"descriptor of {first.tracklet_id!r}")


def same_content(stored: Record, incoming: Record) -> bool:
    """Idempotency rule: same content hash and same identity means the same upload."""
    return stored.content_hash == incoming.content_hash and stored.identity == incoming.identity


def resolve_existing(stored: Record, incoming: Record) -> PutResult:
    if not same_content(stored, incoming):
        what = "content" if stored.content_hash != incoming.content_hash else "identity"
        raise TrackletConflict(
            incoming.tracklet_id,
            f"already stored with different {what} (stored identity {stored.identity!r}, "
            f"content hash {stored.content_hash}); delete it first to replace it",
        )
    return PutResult(record=stored, created=False)


def with_int_id(record: Record, int_id: int) -> Record:
    return dataclasses.replace(record, int_id=int_id)


def check_replacement_coverage(stored_ids: set[str], new_ids: set[str]) -> None:
    missing = stored_ids - new_ids
    extra = new_ids - stored_ids
    if missing or extra:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} stored tracklet(s) have no new descriptor, e.g. {sorted(missing)[:3]}"
            )
        if extra:
            parts.append(f"{len(extra)} id(s) are not stored, e.g. {sorted(extra)[:3]}")
        raise InvalidRecord("replace_descriptors needs exactly the stored tracklets: " + "; ".join(parts))


def check_page(offset: int, limit: int) -> None:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidRecord(f"offset must be an int >= 0, got {offset!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidRecord(f"limit must be an int >= 1, got {limit!r}")


def check_retention(retention: int) -> int:
    if isinstance(retention, bool) or not isinstance(retention, int) or retention < 1:
        raise InvalidRecord(f"change_retention must be an int >= 1, got {retention!r}")
    return retention


def check_position(seq: int) -> None:
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise InvalidRecord(f"change-feed position must be an int >= 0, got {seq!r}")


def check_jobs_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_JOBS_LIMIT:
        raise InvalidRecord(f"limit must be an int in 1..{MAX_JOBS_LIMIT}, got {limit!r}")


def check_blob_name(name: str) -> None:
    if not isinstance(name, str) or not name or len(name) > 200:
        raise InvalidRecord(f"blob name must be a non-empty string of at most 200 characters, got {name!r}")


def check_after(after: int) -> None:
    if isinstance(after, bool) or not isinstance(after, int) or after < -1:
        raise InvalidRecord(f"after must be an int >= -1, got {after!r}")


def check_batch_size(batch: int) -> None:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidRecord(f"batch must be an int >= 1, got {batch!r}")
