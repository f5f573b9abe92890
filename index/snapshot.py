"""Gallery snapshots (FAISS index kinds): skip rebuilding the index at start when nothing changed.

A snapshot directory holds ``index.faiss`` (the CPU index), ``entries.json`` (the gallery's
metadata table) and ``manifest.json``, written last, which records the SHA-256 of both files, the
index configuration and a digest of the store the gallery was built from: the number of
tracklets, the largest int id and a SHA-256 over the sorted ``(int_id, fingerprint)`` pairs.

The store is the system of record, the snapshot only a cache. A snapshot is loaded only when its
files are intact, its configuration is the one asked for and its store digest equals the store's
current digest. Because int ids are never reused and a record only changes through
``replace_descriptors`` (which changes the fingerprint), equal digests mean equal contents.
Anything else (missing or torn files, another kind or dimension, a store written to since) makes
``build_gallery`` discard the snapshot, rebuild from the store and write a fresh one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.faiss_index import faiss_version
from index.gallery import Gallery, GalleryEntry, GalleryState, IndexOptions
from index.store import Store

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 1
INDEX_FILE = "index.faiss"
ENTRIES_FILE = "entries.json"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class StoreDigest:
    """What a snapshot must agree with: computed from int ids and the fingerprint only."""

    count: int
    max_int_id: int
    checksum: str
    fingerprint: str | None


@dataclass(frozen=True)
class SnapshotManifest:
    version: int
    kind: str
    dim: int
    options: dict[str, Any]
    trained: bool
    count: int
    max_int_id: int
    checksum: str
    fingerprint: str | None
    index_sha256: str
    entries_sha256: str
    faiss_version: str
    created_at: float


def digest_ids(int_ids: np.ndarray, fingerprint: str | None) -> StoreDigest:
    ids = np.sort(np.asarray(int_ids, dtype=np.int64))
    h = hashlib.sha256()
    fp = fingerprint or ""
    for i in ids.tolist():
        h.update(f"{i}:{fp}\n".encode())
    return StoreDigest(
        count=len(ids),
        max_int_id=int(ids[-1]) if len(ids) else -1,
        checksum=h.hexdigest(),
        fingerprint=fingerprint,
    )


def store_digest(store: Store) -> StoreDigest:
    return digest_ids(store.int_ids(), store.info().fingerprint)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_snapshot(gallery: Gallery, store: Store, directory: str | Path) -> SnapshotManifest:
    """Write ``gallery`` as a snapshot of ``store``.

    Raises ``ValueError`` when the gallery does not hold exactly the store's tracklets (a snapshot
    of anything else would be loaded against the wrong store state).
    """
    directory = Path(directory)
    state = gallery.export_state()
    digest = store_digest(store)
    ours = digest_ids(np.array([e.int_id for e in state.entries], dtype=np.int64), digest.fingerprint)
    if ours.checksum != digest.checksum:
        raise ValueError(
            f"gallery holds {ours.count} tracklets (max int id {ours.max_int_id}) but the store holds "
            f"{digest.count} (max int id {digest.max_int_id}): rebuild the gallery before snapshotting"
        )
    index_bytes = state.index
    entries_bytes = json.dumps(
        [dataclasses.astuple(e) for e in state.entries], separators=(",", ":")
    ).encode()
    manifest = SnapshotManifest(
        version=SNAPSHOT_VERSION,
        kind=state.kind,
        dim=state.dim,
        options=dataclasses.asdict(state.options),
        trained=state.trained,
        count=digest.count,
        max_int_id=digest.max_int_id,
        checksum=digest.checksum,
        fingerprint=digest.fingerprint,
        index_sha256=_sha256(index_bytes),
        entries_sha256=_sha256(entries_bytes),
        faiss_version=faiss_version(),
        created_at=time.time(),
    )
    directory.mkdir(parents=True, exist_ok=True)
    # The manifest goes last and names the other files' hashes, so a crash mid-write leaves a
    # snapshot that fails verification rather than one that loads mismatched parts.
    (directory / MANIFEST_FILE).unlink(missing_ok=True)
    _write_atomic(directory / INDEX_FILE, index_bytes)
    _write_atomic(directory / ENTRIES_FILE, entries_bytes)
    _write_atomic(directory / MANIFEST_FILE, json.dumps(dataclasses.asdict(manifest), indent=2).encode())
    return manifest


def read_manifest(directory: str | Path) -> SnapshotManifest | None:
    path = Path(directory) / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        return SnapshotManifest(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None


def load_snapshot(
    directory: str | Path,
    store: Store,
    dim: int,
    kind: str = "flat",
    options: IndexOptions | None = None,
    use_gpu: bool | None = None,
    graph_k: int | None = 30,
) -> tuple[Gallery | None, str]:
    """The snapshot's gallery if it is intact and agrees with ``store`` and the requested
    configuration; otherwise ``(None, reason)``."""
    directory = Path(directory)
    options = options if options is not None else IndexOptions()
    manifest = read_manifest(directory)
    if manifest is None:
        return None, f"no readable {MANIFEST_FILE} in {directory}"
    if manifest.version != SNAPSHOT_VERSION:
        return None, f"snapshot version {manifest.version}, expected {SNAPSHOT_VERSION}"
    if manifest.kind != kind or manifest.dim != dim or manifest.options != dataclasses.asdict(options):
        return None, (
            f"snapshot is kind={manifest.kind} dim={manifest.dim} options={manifest.options}; "
            f"asked for kind={kind} dim={dim} options={dataclasses.asdict(options)}"
        )
    digest = store_digest(store)
    if (manifest.count, manifest.max_int_id, manifest.checksum, manifest.fingerprint) != (
        digest.count,
        digest.max_int_id,
        digest.checksum,
        digest.fingerprint,
    ):
        return None, (
            f"store changed since the snapshot: snapshot has {manifest.count} tracklets (max int id "
            f"{manifest.max_int_id}, fingerprint {manifest.fingerprint}), store has {digest.count} "
            f"(max int id {digest.max_int_id}, fingerprint {digest.fingerprint})"
        )
    try:
        index_bytes = (directory / INDEX_FILE).read_bytes()
        entries_bytes = (directory / ENTRIES_FILE).read_bytes()
    except OSError as exc:
        return None, f"snapshot file unreadable: {exc}"
    if _sha256(index_bytes) != manifest.index_sha256 or _sha256(entries_bytes) != manifest.entries_sha256:
        return None, "snapshot files do not match their manifest checksums"
    try:
        entries = [GalleryEntry(*row) for row in json.loads(entries_bytes)]
        if digest_ids(np.array([e.int_id for e in entries], dtype=np.int64), digest.fingerprint) != digest:
            return None, "snapshot entry table does not match the store"
        state = GalleryState(
            dim=dim, kind=kind, options=options, index=index_bytes, trained=manifest.trained, entries=entries
        )
        return Gallery.from_state(state, use_gpu=use_gpu, graph_k=graph_k, store=store), "loaded"
    except (ValueError, TypeError, RuntimeError) as exc:
        return None, f"snapshot rejected: {exc}"


def discard_snapshot(directory: str | Path) -> None:
    directory = Path(directory)
    for name in (MANIFEST_FILE, INDEX_FILE, ENTRIES_FILE):
        (directory / name).unlink(missing_ok=True)


def build_gallery(
    store: Store,
    dim: int,
    kind: str = "flat",
    *,
    use_gpu: bool | None = None,
    graph_k: int | None = 30,
    options: IndexOptions | None = None,
    snapshot_dir: str | Path | None = None,
    save: bool = True,
) -> Gallery:
    """The gallery for ``store`` at start: from the snapshot when it agrees with the store,
    otherwise rebuilt from ``store.iter_records()`` (and, with ``save``, snapshotted).

    Raises ``DimensionMismatch`` when the store's descriptors are not ``dim``-dimensional.
    """
    options = options if options is not None else IndexOptions()
    if snapshot_dir is not None:
        gallery, reason = load_snapshot(snapshot_dir, store, dim, kind, options, use_gpu, graph_k)
        if gallery is not None:
            log.info("gallery loaded from snapshot %s (%d tracklets)", snapshot_dir, len(gallery))
            return gallery
        log.info("gallery snapshot %s not used: %s; rebuilding from the store", snapshot_dir, reason)
        discard_snapshot(snapshot_dir)
    gallery = Gallery(dim, kind=kind, use_gpu=use_gpu, graph_k=graph_k, options=options)
    gallery.rebuild_from(store)
    if snapshot_dir is not None and save:
        try:
            save_snapshot(gallery, store, snapshot_dir)
        except ValueError as exc:
            # The store was written to while rebuilding; the gallery itself is still usable and
            # the next start rebuilds again.
            log.warning("gallery snapshot not written: %s", exc)
    return gallery
