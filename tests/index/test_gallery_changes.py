"""Gallery.apply_changes: a second gallery on the same store (and, for milvus, the same collection)
follows the first one's writes through the store's change feed; applying is idempotent, heals a
writer that died between its two writes, and searches never fail on ids only the shared index has."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from index.gallery import Gallery
from index.rerank import RerankParams
from index.store import DimensionMismatch, Record, RedisStore, SQLiteStore, Store
from index.types import SearchFilter
from tests.conftest import RedisServer
from tests.index.test_gallery import DIM, clustered, fill_store, same_results, unit

KINDS = ["flat", "milvus"]


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path, redis_prefix: str) -> Iterator[Store]:
    if request.param == "sqlite":
        s: Store = SQLiteStore(tmp_path / "g.db")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        s = RedisStore(server.url, prefix=redis_prefix)
    yield s
    s.close()


def gallery(kind: str, tmp_path: Path, graph_k: int | None = 10) -> Gallery:
    if kind == "milvus":
        pytest.importorskip("pymilvus", reason="the milvus extra is not installed (pip install '.[milvus]')")
        return Gallery(DIM, kind="milvus", graph_k=graph_k, index_params={"uri": str(tmp_path / "m.db")})
    return Gallery(DIM, kind=kind, use_gpu=False, graph_k=graph_k)


class Follower:
    """A gallery that follows the feed from the position read before it was loaded."""

    def __init__(self, g: Gallery, store: Store) -> None:
        self.gallery, self.store = g, store
        self.position = store.change_head()
        g.reconcile(store)

    def catch_up(self) -> tuple[int, int]:
        added = removed = 0
        for _ in range(self.store.change_head() + 1):  # bounded: each round consumes >= 1 change
            changes, self.position = self.store.changes_since(self.position, limit=7)
            if not changes:
                break
            a, r = self.gallery.apply_changes(self.store, changes)
            added, removed = added + a, removed + r
        return added, removed


def write(g: Gallery, store: Store, records: list[Record]) -> list[Record]:
    """What the server does for an enroll: the store first, then its own gallery."""
    stored = [r.record for r in store.put_many(records)]
    g.add_records(stored)
    return stored


def delete(g: Gallery, store: Store, tracklet_ids: list[str]) -> None:
    for tid in tracklet_ids:
        store.delete(tid)
    g.remove_tracklets(tracklet_ids)


@pytest.mark.parametrize("kind", KINDS)
def test_a_follower_sees_the_writers_adds_and_deletes(kind: str, store: Store, tmp_path: Path) -> None:
    records = fill_store(store, n_ids=10, per_id=4)
    writer = Follower(gallery(kind, tmp_path), store)
    reader = Follower(gallery(kind, tmp_path), store)
    assert len(reader.gallery) == 40

    fresh = new_records(seed=3)
    write(writer.gallery, store, fresh)
    delete(writer.gallery, store, [records[0].tracklet_id, records[5].tracklet_id])
    store.delete_identity("id003")
    writer.gallery.remove_tracklets([r.tracklet_id for r in records if r.identity == "id003"])

    assert reader.catch_up() == (len(fresh), 6)
    assert writer.catch_up() == (0, 0)  # its own writes: already applied, nothing happens twice
    assert reader.catch_up() == (0, 0)
    expected = sorted(r.int_id for r in store.iter_records())  # type: ignore[type-var]
    for g in (writer.gallery, reader.gallery):
        assert g.int_ids().tolist() == expected
        assert g.identities() == {name: n for name, n in store.list_identities(0, 1000)[0]}
    qs = unit(np.random.default_rng(4).standard_normal((6, DIM)))
    rebuilt = Gallery.from_store(store, kind="flat", use_gpu=False, graph_k=10, keep_graph=False)
    for g in (writer.gallery, reader.gallery):
        same_results(g, rebuilt, qs, top_k=8)
        same_results(g, rebuilt, qs, top_k=8, filters=SearchFilter(exclude_camera="c2"))
        # The follower's neighbour graph was built from the feed, yet equals one rebuilt at start.
        same_results(g, rebuilt, qs, top_k=5, rerank=RerankParams(), candidates=30)
    for g in (writer.gallery, reader.gallery):
        g.close()


def new_records(seed: int) -> list[Record]:
    """15 records not stored yet (tracklet ids n*, identities new*)."""
    entries, feats, _ = clustered(5, 3, seed=seed)
    return [
        Record(
            tracklet_id=f"n{e.tracklet_id}",
            identity=f"new{e.identity}",
            camera=e.camera,
            platform=e.platform,  # type: ignore[arg-type]
            session=e.session,
            num_frames=8,
            fingerprint="ckpt-1",
            descriptor=f,
            content_hash=f"h-n{e.tracklet_id}",
        )
        for e, f in zip(entries, feats, strict=True)
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_changes_seen_late_or_twice_change_nothing(kind: str, store: Store, tmp_path: Path) -> None:
    """A follower loaded after the writes still reads them from the feed (from its old position):
    adds of records since deleted, re-enrolled ids and repeated batches are all no-ops."""
    g = gallery(kind, tmp_path)
    position = store.change_head()
    a = store.put(new_records(1)[0]).record
    store.delete(a.tracklet_id)
    again = store.put(
        Record(**{**vars_of(a), "content_hash": "other", "int_id": None})  # same tracklet id, new int id
    ).record
    b = store.put(new_records(1)[1]).record
    g.reconcile(store)  # loads the current contents: `again` and b
    changes, _ = store.changes_since(position)
    assert [c.op for c in changes] == ["add", "remove", "add", "add"]
    assert g.apply_changes(store, changes) == (0, 0)
    assert g.apply_changes(store, changes) == (0, 0)
    assert sorted(g.int_ids().tolist()) == sorted([again.int_id, b.int_id])
    assert g.search(a.descriptor, top_k=1).identities[0].tracklets[0].int_id == again.int_id
    fresh = Gallery(DIM, kind="flat", use_gpu=False, graph_k=10)
    assert fresh.apply_changes(store, changes) == (2, 0)  # an empty gallery gets exactly the survivors
    assert fresh.int_ids().tolist() == g.int_ids().tolist()
    g.close()


def vars_of(r: Record) -> dict[str, object]:
    return {f: getattr(r, f) for f in r.__dataclass_fields__}


@pytest.mark.parametrize("op", ["put", "delete"])
def test_a_follower_heals_a_shared_index_after_a_writer_died_between_its_writes(
    op: str, store: Store, tmp_path: Path
) -> None:
    fill_store(store, n_ids=4, per_id=3)
    writer = Follower(gallery("milvus", tmp_path), store)
    reader = Follower(gallery("milvus", tmp_path), store)
    index_ids = writer.gallery._index.ids
    if op == "put":
        late = store.put(new_records(2)[0]).record  # the writer stored it, then died: Milvus lacks it
        assert late.int_id not in index_ids().tolist()
    else:
        gone = store.get("t4")
        assert gone is not None and store.delete("t4")  # deleted in the store only
    assert reader.catch_up() == ((1, 0) if op == "put" else (0, 1))
    stored = sorted(r.int_id for r in store.iter_records())  # type: ignore[type-var]
    assert sorted(index_ids().tolist()) == stored  # the shared index agrees with the store again
    if op == "put":
        assert (
            reader.gallery.search(late.descriptor, top_k=1).identities[0].tracklets[0].tracklet_id
            == late.tracklet_id
        )
    # A third process starting now has nothing to reconcile.
    third = gallery("milvus", tmp_path)
    assert third.reconcile(store) == (0, 0)
    for g in (writer.gallery, reader.gallery, third):
        g.close()


def test_searches_skip_ids_the_shared_index_and_this_gallery_disagree_on(
    store: Store, tmp_path: Path
) -> None:
    """Between another replica's write and this one applying it, Milvus holds ids this gallery has
    no metadata for (its add) or lacks ids this gallery still lists (its delete): no error, and the
    answer is this gallery's applied state."""
    records = fill_store(store, n_ids=6, per_id=3)
    writer = Follower(gallery("milvus", tmp_path), store)
    reader = Follower(gallery("milvus", tmp_path), store)
    target = records[7]
    extra = write(writer.gallery, store, new_records(5))
    delete(writer.gallery, store, [target.tracklet_id])
    for q in [target.descriptor, extra[0].descriptor]:
        for kwargs in (
            {},
            {"aggregate": "mean"},
            {"rerank": RerankParams()},
            {"filters": SearchFilter(session="s1")},
            {"candidates": 1},
        ):
            result = reader.gallery.search(q, top_k=50, **kwargs)  # type: ignore[arg-type]
            listed = {t.tracklet_id for h in result.identities for t in h.tracklets}
            assert not listed & {r.tracklet_id for r in extra}  # not applied here yet
            assert target.tracklet_id not in listed  # gone from the shared index already
    reader.catch_up()
    hit = reader.gallery.search(extra[0].descriptor, top_k=1).identities[0].tracklets[0]
    assert hit.tracklet_id == extra[0].tracklet_id
    for g in (writer.gallery, reader.gallery):
        g.close()


def test_bad_changes_are_refused(store: Store, tmp_path: Path) -> None:
    g = gallery("flat", tmp_path)
    from index.store import Change

    with pytest.raises(ValueError, match="unknown change op 'rename'"):
        g.apply_changes(store, [Change(1, "rename", "t", 1)])  # type: ignore[arg-type]
    other = SQLiteStore(tmp_path / "other.db")
    try:
        wide = Record(**{**vars_of(new_records(1)[0]), "descriptor": unit(np.ones(DIM + 1))})
        stored = other.put(wide).record
        changes, _ = other.changes_since(0)
        with pytest.raises(DimensionMismatch, match="stored descriptor of 'nt0' has dimension 33"):
            g.apply_changes(other, changes)
        assert stored.int_id not in g
    finally:
        other.close()
