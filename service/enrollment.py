"""Gallery writes: enroll, bulk import, delete - store first, index second, under one lock.

These functions block (store I/O, FAISS updates); routes run them in the thread pool.

Content hashes make re-uploads idempotent: the hash covers exactly what defines a tracklet - the
frame bytes in order (or, for bulk imports, the descriptor bytes), the identity and the fields
(camera, platform, session, metadata) - and not the checkpoint, so a gallery re-embedded with a new
checkpoint still recognises the same upload.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from index.gallery import Gallery
from index.store import (
    DimensionMismatch,
    FingerprintMismatch,
    InvalidRecord,
    PutResult,
    Record,
    StoreError,
    TrackletConflict,
    TrackletNotFound,
)
from index.types import check_descriptors
from service.core.errors import ApiError, model_switching
from service.runtime import Runtime
from service.schemas import BatchRecordIn

log = logging.getLogger(__name__)

# Expected, state-independent refusals: the write certainly did not happen.
_DEFINITE = (InvalidRecord, TrackletConflict, FingerprintMismatch, DimensionMismatch, TrackletNotFound)
_INDEX_CHUNK = 10_000


def _fields_digest(h: Any, identity: str, camera: str | None, platform: str | None, session: str | None,
                   metadata: dict[str, Any]) -> None:
    fields = {"identity": identity, "camera": camera, "platform": platform, "session": session, "metadata": metadata}
    h.update(json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False).encode())


def frames_content_hash(frames: Sequence[bytes], identity: str, camera: str | None, platform: str | None,
                        session: str | None, metadata: dict[str, Any]) -> str:
    h = hashlib.sha256(b"sasreid-frames-v1\n")
    for data in frames:
        # Length-prefixed digests: frame boundaries are part of the content.
        h.update(len(data).to_bytes(8, "little"))
        h.update(hashlib.sha256(data).digest())
    _fields_digest(h, identity, camera, platform, session, metadata)
    return h.hexdigest()


def descriptor_content_hash(descriptor: np.ndarray, identity: str, camera: str | None, platform: str | None,
                            session: str | None, metadata: dict[str, Any]) -> str:
    h = hashlib.sha256(b"sasreid-descriptor-v1\n")
    h.update(np.ascontiguousarray(descriptor, dtype="<f4").tobytes())
    _fields_digest(h, identity, camera, platform, session, metadata)
    return h.hexdigest()


def _gallery(runtime: Runtime) -> Gallery:
    gallery = runtime.gallery
    if gallery is None:
        raise ApiError(503, "not_ready", "the gallery index is not restored yet")
    return gallery


def _store_call(runtime: Runtime, what: str, fn: Any, *args: Any) -> Any:
    """Run a store write; an error that leaves the outcome unknown marks the index for a rebuild."""
    try:
        return fn(*args)
    except FingerprintMismatch as exc:
        # Descriptors reach the store only after a check against this server's model: the store
        # has moved on to another checkpoint (a re-embedding job) this server is switching to.
        raise model_switching(exc.gallery_fingerprint) from exc
    except _DEFINITE:
        raise
    except StoreError as exc:
        # A failed commit (disk full, lock timeout, lost connection) is rolled back by the store,
        # but the index is reconciled with the store anyway: cheap, and it never trusts a guess.
        runtime.mark_dirty(f"{what} failed: {exc}")
        raise


def _index(runtime: Runtime, records: list[Record]) -> None:
    gallery = _gallery(runtime)
    fresh = [r for r in records if gallery.int_id_of(r.tracklet_id) is None]
    try:
        for start in range(0, len(fresh), _INDEX_CHUNK):
            gallery.add_records(fresh[start : start + _INDEX_CHUNK])
    except (ValueError, RuntimeError) as exc:
        # The store has the records; the index will be rebuilt from it.
        runtime.mark_dirty(f"indexing stored records failed: {exc}")
        raise ApiError(500, "index_error", f"stored, but indexing failed (index rebuild scheduled): {exc}") from exc


def check_descriptor(runtime: Runtime, descriptor: np.ndarray, where: str) -> None:
    """The checks the index would make, done before the store write so the two never disagree."""
    try:
        check_descriptors(descriptor, runtime.encoder.dim, where, single=True)
    except ValueError as exc:
        raise ApiError(422, "invalid_descriptor", str(exc), field=where) from None


def commit_record(runtime: Runtime, record: Record, frames: Sequence[bytes] | None) -> PutResult:
    """Store one record (with its frames when they are kept), then index it."""
    if record.fingerprint != runtime.encoder.fingerprint:
        raise model_switching(runtime.encoder.fingerprint)  # embedded just before a switch
    check_descriptor(runtime, record.descriptor, "descriptor")
    with runtime.write_lock:
        result: PutResult = _store_call(runtime, "enroll", runtime.store.put, record, frames)
        _index(runtime, [result.record])
    return result


def accept_existing(runtime: Runtime, tracklet_id: str, identity: str, content_hash: str) -> Record | None:
    """Answer a re-upload of a stored tracklet id without embedding it.

    Returns the stored record when the content is the same (indexing it if the index lacks it),
    raises ``TrackletConflict`` when it differs, and returns None when the id is not stored.
    """
    if runtime.store.get(tracklet_id) is None:
        return None
    with runtime.write_lock:
        # Read again under the lock: a concurrent delete must not leave the index holding it.
        stored = runtime.store.get(tracklet_id)
        if stored is None:
            return None
        if stored.content_hash != content_hash or stored.identity != identity:
            what = "content" if stored.content_hash != content_hash else "identity"
            raise TrackletConflict(
                stored.tracklet_id,
                f"already stored with different {what} (stored identity {stored.identity!r}); "
                "delete it first to replace it",
            )
        _index(runtime, [stored])
    return stored


def records_from_batch(runtime: Runtime, items: Sequence[BatchRecordIn], first: int = 0) -> list[Record]:
    """Check precomputed descriptors against the served checkpoint and make their records.

    Raises ``ApiError`` (422) naming ``records[i]`` (``i`` counted from ``first``) for a wrong
    fingerprint or dimension, a NaN or a descriptor that is not unit-norm."""
    dim = runtime.encoder.dim
    fingerprint = runtime.encoder.fingerprint
    records: list[Record] = []
    for i, item in enumerate(items, start=first):
        where = f"records[{i}]"
        if item.fingerprint != fingerprint:
            raise ApiError(
                422,
                "fingerprint_mismatch",
                f"{where} was made with checkpoint {item.fingerprint}; this gallery holds descriptors of "
                f"checkpoint {fingerprint} (descriptors of different checkpoints are not comparable)",
                field=f"{where}.fingerprint",
            )
        if len(item.descriptor) != dim:
            raise ApiError(
                422,
                "dimension_mismatch",
                f"{where}.descriptor has {len(item.descriptor)} values; this checkpoint makes {dim}-d descriptors",
                field=f"{where}.descriptor",
            )
        vec = np.asarray(item.descriptor, dtype=np.float32)
        if not np.all(np.isfinite(vec)):
            raise ApiError(
                422, "non_finite_descriptor", f"{where}.descriptor contains NaN or infinity", field=f"{where}.descriptor"
            )
        norm = float(np.linalg.norm(vec.astype(np.float64)))
        if not math.isclose(norm, 1.0, abs_tol=1e-3):
            raise ApiError(
                422,
                "invalid_descriptor",
                f"{where}.descriptor must be L2-normalised (norm {norm:.6g})",
                field=f"{where}.descriptor",
            )
        records.append(
            Record(
                tracklet_id=item.tracklet_id,
                identity=item.identity,
                num_frames=item.num_frames,
                fingerprint=item.fingerprint,
                descriptor=vec,
                content_hash=descriptor_content_hash(
                    vec, item.identity, item.camera, item.platform, item.session, item.metadata
                ),
                camera=item.camera,
                platform=item.platform,
                session=item.session,
                metadata=item.metadata,
            )
        )
    return records


def commit_batch(runtime: Runtime, records: list[Record]) -> list[PutResult]:
    """Store a batch all-or-nothing, then index the records the index does not have yet."""
    with runtime.write_lock:
        results: list[PutResult] = _store_call(runtime, "bulk import", runtime.store.put_many, records)
        _index(runtime, [r.record for r in results])
    return results


def delete_tracklet(runtime: Runtime, tracklet_id: str) -> bool:
    with runtime.write_lock:
        deleted: bool = _store_call(runtime, "delete", runtime.store.delete, tracklet_id)
        _gallery(runtime).remove_tracklets([tracklet_id])
    return deleted


def delete_identity(runtime: Runtime, identity: str) -> list[str]:
    with runtime.write_lock:
        deleted: list[str] = _store_call(runtime, "delete identity", runtime.store.delete_identity, identity)
        _gallery(runtime).remove_tracklets(deleted)
    return deleted
