"""The re-ranking graph kept in the store (index.graph_store): a restart loads it instead of
rebuilding it, unsaved changes are caught up, and the answers equal those of a graph built from
scratch on the same records; damaged or foreign graphs are detected and rebuilt. Real SQLite,
redis-server and milvus-lite."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pytest

from index import graph_store
from index.gallery import Gallery
from index.graph_store import blob_name, decode, encode
from index.rerank import RerankParams
from index.store import Record, Store
from index.types import SearchFilter
from tests.index.test_gallery import DIM, fill_store, same_results, unit
from tests.index.test_gallery_changes import Follower, delete, new_records, store, write

__all__ = ["store"]  # the (sqlite, redis) store fixture, shared with test_gallery_changes

K = 30  # long enough lists for the paper's k1 = 20 as well as the defaults
KINDS = ["flat", "milvus"]
QUERIES = unit(np.random.default_rng(4).standard_normal((6, DIM)))


def extra(seed: int, tag: str, n: int = 15) -> list[Record]:
    """``n`` records not stored yet, with tracklet ids unique to ``tag``."""
    return [
        dataclasses.replace(r, tracklet_id=f"{tag}{r.tracklet_id}", content_hash=f"h-{tag}{r.tracklet_id}")
        for r in new_records(seed)[:n]
    ]


def opened(kind: str, store: Store, tmp_path: Path) -> Gallery:
    """A gallery loaded from ``store`` as a server start does (reconcile for the durable kind)."""
    if kind == "milvus":
        pytest.importorskip("pymilvus", reason="the milvus extra is not installed (pip install '.[milvus]')")
        g = Gallery(DIM, kind="milvus", graph_k=K, index_params={"uri": str(tmp_path / "m.db")})
        g.reconcile(store)
    else:
        g = Gallery(DIM, kind=kind, use_gpu=False, graph_k=K)
        g.rebuild_from(store)
    return g


def assert_same_graph(g: Gallery, store: Store) -> None:
    """``g``'s graph and re-ranked answers equal those of a graph built now from the records."""
    ref = Gallery.from_store(store, kind="flat", use_gpu=False, graph_k=K, keep_graph=False)
    a, b = g._graph, ref._graph  # white-box: the lists themselves, not only what queries see
    assert a is not None and b is not None
    ids = np.sort(b.ids())
    np.testing.assert_array_equal(np.sort(a.ids()), ids)
    for got, want in zip(a.neighbors(ids), b.neighbors(ids), strict=True):
        np.testing.assert_array_equal(got, want)
    sa, sb = a.export_state(), b.export_state()
    np.testing.assert_array_equal(sa.rowmax, sb.rowmax)
    np.testing.assert_array_equal(sa.complete, sb.complete)
    for params in (RerankParams(), RerankParams.paper()):
        same_results(g, ref, QUERIES, top_k=5, rerank=params, candidates=40)
    same_results(g, ref, QUERIES, top_k=5, rerank=RerankParams(), filters=SearchFilter(exclude_camera="c2"))
    ref.close()


@pytest.fixture
def no_background_saves(monkeypatch: pytest.MonkeyPatch) -> None:
    """Saves only at close or when asked: a test then knows exactly what the store holds."""
    monkeypatch.setattr(graph_store, "SAVE_EVERY", 10**9)
    monkeypatch.setattr(graph_store, "SAVE_AFTER_S", 1e9)


def crash(g: Gallery) -> None:
    """What a kill -9 leaves: the stored graph as of the last save (nothing flushed)."""
    assert g.durable_graph is not None
    g.durable_graph.close()
    g._index.close()


@pytest.mark.parametrize("kind", KINDS)
def test_restart_loads_the_stored_graph_and_answers_as_a_rebuilt_one(
    kind: str, store: Store, tmp_path: Path, no_background_saves: None, caplog: pytest.LogCaptureFixture
) -> None:
    records = fill_store(store, n_ids=12, per_id=5)
    first = opened(kind, store, tmp_path)
    assert first.graph_load is not None and first.graph_load.source == "rebuilt"
    assert first.graph_load.reason == "no graph stored yet"
    assert first.durable_graph is not None and first.durable_graph.saves == 1  # persisted at once
    write(first, store, new_records(seed=3))
    delete(first, store, [records[0].tracklet_id, records[7].tracklet_id])
    first.close()  # flushes the 17 unsaved changes

    for round_ in range(2):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="index.graph_store"):
            again = opened(kind, store, tmp_path)
        load = again.graph_load
        assert load is not None and (load.source, load.added, load.removed) == ("persisted", 0, 0)
        assert load.count == store.count_tracklets()
        assert any("graph loaded from the store" in r.message for r in caplog.records)
        assert not any("rebuilt" in r.message for r in caplog.records)
        assert_same_graph(again, store)
        # Enrolls and deletes after the restart keep the graph equal to a rebuilt one.
        write(again, store, extra(10 + round_, f"r{round_}", 4))
        gone = f"id00{4 + round_}"
        store.delete_identity(gone)
        again.remove_tracklets([r.tracklet_id for r in records if r.identity == gone])
        assert_same_graph(again, store)
        again.close()


@pytest.mark.parametrize("kind", KINDS)
def test_changes_a_crash_left_unsaved_are_caught_up(
    kind: str, store: Store, tmp_path: Path, no_background_saves: None
) -> None:
    records = fill_store(store, n_ids=12, per_id=5)
    crash(opened(kind, store, tmp_path))  # stores the rebuilt graph
    g = opened(kind, store, tmp_path)
    fresh = write(g, store, new_records(seed=3))
    delete(g, store, [r.tracklet_id for r in records[10:16]])
    assert g.durable_graph is not None and g.durable_graph.pending == len(fresh) + 6
    crash(g)

    g = opened(kind, store, tmp_path)
    load = g.graph_load
    assert load is not None and (load.source, load.added, load.removed) == ("persisted", len(fresh), 6)
    assert_same_graph(g, store)
    g.close()  # saves the caught-up graph: the next start has nothing to catch up
    g = opened(kind, store, tmp_path)
    assert g.graph_load is not None and (g.graph_load.added, g.graph_load.removed) == (0, 0)
    g.close()


def _damage(data: bytes, how: str) -> bytes:
    state, checks, header = decode(data)
    fingerprint = header["fingerprint"]
    assert isinstance(fingerprint, str)
    if how == "torn":
        return data[: len(data) // 2]
    if how == "flipped":
        out = bytearray(data)
        out[-5] ^= 0x10
        return bytes(out)
    if how == "not a graph":
        return b"{}" + data
    if how == "other checkpoint":
        return encode(state, checks, "ckpt-2")
    if how == "lists point outside":
        nbr = state.nbr.copy()
        nbr[0, 0] = len(state.ids) + 3
        return encode(type(state)(**{**state.__dict__, "nbr": nbr}), checks, fingerprint)
    if how == "count":
        return encode(type(state)(**{**state.__dict__, "ids": state.ids[:-1]}), checks[:-1], fingerprint)
    raise AssertionError(how)


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("torn", "SHA-256"),
        ("flipped", "SHA-256"),
        ("not a graph", "not a re-ranking graph"),
        ("other checkpoint", "checkpoint"),
        ("lists point outside", "points outside"),
        ("count", "expected"),
    ],
)
def test_a_damaged_or_foreign_graph_is_rebuilt_and_replaced(
    how: str, reason: str, store: Store, tmp_path: Path, no_background_saves: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fill_store(store, n_ids=8, per_id=5)
    opened("flat", store, tmp_path).close()
    name = blob_name(K)
    data = store.get_blob(name)
    assert data is not None
    store.put_blob(name, _damage(data, how))
    with caplog.at_level(logging.WARNING, logger="index.graph_store"):
        g = opened("flat", store, tmp_path)
    assert g.graph_load is not None and g.graph_load.source == "rebuilt"
    assert reason in g.graph_load.reason
    assert any("graph rebuilt and saved" in r.message and reason in r.message for r in caplog.records)
    assert_same_graph(g, store)
    g.close()
    assert opened("flat", store, tmp_path).graph_load.source == "persisted"  # type: ignore[union-attr]


def test_an_item_whose_descriptor_digest_differs_is_replaced_in_the_loaded_graph(
    store: Store, tmp_path: Path, no_background_saves: None
) -> None:
    """The blob's per-item digests are compared with the stored descriptors: an item whose
    descriptor is not the one its lists were computed from is removed and added again."""
    fill_store(store, n_ids=8, per_id=5)
    opened("flat", store, tmp_path).close()
    state, checks, header = decode(store.get_blob(blob_name(K)) or b"")
    checks = checks.copy()
    checks[[3, 17]] ^= np.uint64(1)
    store.put_blob(blob_name(K), encode(state, checks, header["fingerprint"]))  # type: ignore[arg-type]
    g = opened("flat", store, tmp_path)
    load = g.graph_load
    assert load is not None and (load.source, load.added, load.removed) == ("persisted", 2, 2)
    assert_same_graph(g, store)
    g.close()


def test_missing_graph_is_rebuilt_and_a_graph_far_behind_is_rebuilt_not_caught_up(
    store: Store, tmp_path: Path, no_background_saves: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graph_store, "_ADD_CHUNK", 8)  # "far behind" needs more than a chunk of items
    records = fill_store(store, n_ids=4, per_id=5)
    crash(opened("flat", store, tmp_path))  # a graph of 20 items
    write(Gallery(DIM, use_gpu=False, graph_k=None), store, extra(3, "a") + extra(4, "b", 10))
    g = opened("flat", store, tmp_path)  # 45 items now, 25 of them unknown to the graph
    assert g.graph_load is not None and g.graph_load.source == "rebuilt"
    assert "behind" in g.graph_load.reason
    assert_same_graph(g, store)
    g.close()
    store.delete_blob(blob_name(K))
    g = opened("flat", store, tmp_path)
    assert g.graph_load is not None and g.graph_load.reason == "no graph stored yet"
    g.close()
    assert len(records) == 20


def test_the_saver_thread_writes_after_enough_changes_or_time(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graph_store, "SAVE_EVERY", 5)
    monkeypatch.setattr(graph_store, "SAVE_AFTER_S", 1e9)
    fill_store(store, n_ids=6, per_id=5)
    g = opened("flat", store, tmp_path)
    durable = g.durable_graph
    assert durable is not None and durable.saves == 1

    def saved(n: int) -> None:
        deadline = time.monotonic() + 20.0
        while durable.saves < n or durable.pending:
            assert time.monotonic() < deadline, f"{durable.saves} saves, {durable.pending} pending"
            time.sleep(0.02)

    write(g, store, new_records(seed=3)[:4])
    time.sleep(0.3)
    assert durable.saves == 1 and durable.pending == 4  # fewer than SAVE_EVERY: not yet
    write(g, store, new_records(seed=3)[4:6])
    saved(2)
    monkeypatch.setattr(graph_store, "SAVE_AFTER_S", 0.2)
    delete(g, store, [new_records(seed=3)[0].tracklet_id])
    with durable._cond:
        durable._cond.notify()  # the saver slept with the old deadline
    saved(3)
    crash(g)  # nothing unsaved: the next start has nothing to catch up
    again = opened("flat", store, tmp_path)
    assert again.graph_load is not None and (again.graph_load.added, again.graph_load.removed) == (0, 0)
    assert_same_graph(again, store)
    again.close()


@pytest.mark.parametrize("kind", KINDS)
def test_replicas_following_the_feed_save_the_same_graph(
    kind: str, store: Store, tmp_path: Path, no_background_saves: None
) -> None:
    records = fill_store(store, n_ids=10, per_id=4)
    writer = Follower(opened(kind, store, tmp_path), store)
    reader = Follower(opened(kind, store, tmp_path), store)
    write(writer.gallery, store, new_records(seed=3))
    delete(writer.gallery, store, [records[1].tracklet_id, records[9].tracklet_id])
    reader.catch_up()
    writer.catch_up()
    for f in (writer, reader):
        assert_same_graph(f.gallery, store)
    crash(writer.gallery)
    reader.gallery.close()  # the reader's save is the one left in the store
    third = opened(kind, store, tmp_path)
    assert third.graph_load is not None and (third.graph_load.added, third.graph_load.removed) == (0, 0)
    assert_same_graph(third, store)
    third.close()


def test_snapshot_directory_start_takes_the_graph_from_the_store(
    store: Store, tmp_path: Path, no_background_saves: None
) -> None:
    from index.snapshot import build_gallery

    fill_store(store, n_ids=8, per_id=5)
    build_gallery(store, DIM, use_gpu=False, graph_k=K, snapshot_dir=tmp_path / "snap").close()
    g = build_gallery(store, DIM, use_gpu=False, graph_k=K, snapshot_dir=tmp_path / "snap")
    assert g.graph_load is not None and g.graph_load.source == "persisted"
    assert_same_graph(g, store)
    g.close()
