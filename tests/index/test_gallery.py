"""Gallery search against brute-force numpy, filters, aggregation, approximate kinds, rebuild and snapshots."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from index.gallery import Gallery
from index.rerank import RerankParams
from index.snapshot import INDEX_FILE, MANIFEST_FILE, build_gallery, load_snapshot, save_snapshot
from index.store import DimensionMismatch, Record, RedisStore, SQLiteStore, Store
from index.types import GalleryEntry, IndexOptions, SearchFilter, SearchResult
from tests.conftest import RedisServer

DIM = 32
CAMERAS = ("c1", "c2", "c3", None)
PLATFORMS = ("aerial", "ground", None)
SESSIONS = ("s1", "s2")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(
    n_ids: int, per_id: int, dim: int = DIM, noise: float = 0.6, seed: int = 0
) -> tuple[list[GalleryEntry], np.ndarray, np.ndarray]:
    """Identities as clusters around random centres; metadata cycles through cameras etc."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n_ids, dim)))
    entries, feats = [], []
    for p in range(n_ids):
        for _ in range(per_id):
            k = len(entries)
            entries.append(
                GalleryEntry(
                    int_id=10 + 3 * k,  # sparse ids, like a store with deletions
                    tracklet_id=f"t{k}",
                    identity=f"id{p:03d}",
                    camera=CAMERAS[k % len(CAMERAS)],
                    platform=PLATFORMS[k % len(PLATFORMS)],
                    session=SESSIONS[(k // 2) % len(SESSIONS)],
                )
            )
            feats.append(centres[p] + noise * rng.standard_normal(dim) / np.sqrt(dim))
    return entries, unit(np.array(feats)), centres


def queries(centres: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pick = centres[rng.integers(0, len(centres), n)]
    return unit(pick + 0.6 * rng.standard_normal(pick.shape) / np.sqrt(pick.shape[1]))


def brute_force(
    entries: list[GalleryEntry], feats: np.ndarray, q: np.ndarray, keep: SearchFilter | None = None
) -> tuple[list[int], dict[int, float], dict[str, list[int]]]:
    """Exact ranking of admissible tracklets (score desc, int id asc) and identity -> members."""
    scores = feats @ q
    ids = np.array([e.int_id for e in entries])
    mask = np.array([keep is None or keep.matches(e) for e in entries], dtype=bool)
    order = np.lexsort((ids[mask], -scores[mask]))
    ranked = ids[mask][order].tolist()
    by_id = {e.int_id: e for e in entries}
    members: dict[str, list[int]] = {}
    for i in ranked:
        members.setdefault(by_id[i].identity, []).append(i)
    return ranked, dict(zip(ids.tolist(), scores.tolist(), strict=True)), members


def identity_ranking(members: dict[str, list[int]], score: dict[int, float], how: str) -> list[str]:
    agg = {
        name: (max(score[i] for i in ids) if how == "max" else float(np.mean([score[i] for i in ids])))
        for name, ids in members.items()
    }
    return sorted(agg, key=lambda n: (-agg[n], min(members[n], key=lambda i: (-score[i], i))))


def result_ids(result: SearchResult) -> list[int]:
    return [h.int_id for h in result.tracklets]


@pytest.fixture(scope="module")
def data() -> tuple[list[GalleryEntry], np.ndarray, np.ndarray]:
    return clustered(n_ids=40, per_id=8)


@pytest.fixture(scope="module")
def flat(data: tuple[list[GalleryEntry], np.ndarray, np.ndarray]) -> Gallery:
    entries, feats, _ = data
    g = Gallery(DIM, kind="flat", graph_k=None)
    g.add(entries[:100], feats[:100])
    g.add(entries[100:], feats[100:])
    return g


# ---- exact search -----------------------------------------------------------------------------
def test_flat_search_equals_brute_force(flat: Gallery, data: tuple) -> None:
    entries, feats, centres = data
    assert len(flat) == len(entries) and not flat.use_gpu
    for q in queries(centres, 10):
        ranked, score, members = brute_force(entries, feats, q)
        res = flat.search(q, top_k=len(members), candidates=len(entries))
        assert res.exhaustive and not res.reranked
        assert result_ids(res) == ranked
        np.testing.assert_allclose([h.score for h in res.tracklets], [score[i] for i in ranked], atol=1e-5)
        assert [h.identity for h in res.identities] == identity_ranking(members, score, "max")
        assert [h.rank for h in res.identities] == list(range(1, len(members) + 1))
        for hit in res.identities:
            assert [t.int_id for t in hit.tracklets] == members[hit.identity]
            assert hit.score == pytest.approx(score[members[hit.identity][0]], abs=1e-6)

        # Default pool (200 candidates, top 10): the same top identities, each with all its tracklets.
        small = flat.search(q, top_k=10)
        assert [h.identity for h in small.identities] == identity_ranking(members, score, "max")[:10]
        for hit in small.identities:
            assert [t.int_id for t in hit.tracklets] == members[hit.identity]


def test_pool_grows_to_cover_top_k_identities() -> None:
    entries, feats, centres = clustered(n_ids=12, per_id=30, noise=0.3)
    g = Gallery(DIM, graph_k=None)
    g.add(entries, feats)
    q = queries(centres, 1)[0]
    _, score, members = brute_force(entries, feats, q)
    # 5 candidates cannot span 10 identities of 30 tracklets: the pool must grow.
    res = g.search(q, top_k=10, candidates=5)
    assert [h.identity for h in res.identities] == identity_ranking(members, score, "max")[:10]


def test_mean_aggregation_differs_from_max() -> None:
    q = unit(np.eye(DIM, dtype=np.float32)[0])
    near = unit(q + 0.05 * np.eye(DIM, dtype=np.float32)[1])  # cos ~ 0.999
    mid = unit(q + 0.6 * np.eye(DIM, dtype=np.float32)[2])  # cos ~ 0.86
    far = unit(-q + 0.2 * np.eye(DIM, dtype=np.float32)[3])  # cos ~ -0.98
    feats = np.stack([near, far, far, mid, mid, mid])
    entries = [GalleryEntry(i, f"t{i}", "A" if i < 3 else "B") for i in range(6)]
    g = Gallery(DIM, graph_k=None)
    g.add(entries, feats)
    by_max = g.search(q, top_k=2, aggregate="max")
    by_mean = g.search(q, top_k=2, aggregate="mean")
    assert [h.identity for h in by_max.identities] == ["A", "B"]
    assert [h.identity for h in by_mean.identities] == ["B", "A"]
    scores = feats @ q
    assert by_mean.identities[1].score == pytest.approx(float(np.mean(scores[:3])), abs=1e-6)
    assert by_mean.identities[0].score == pytest.approx(float(np.mean(scores[3:])), abs=1e-6)
    assert [t.int_id for t in by_mean.identities[1].tracklets] == [0, 1, 2]


def test_mean_aggregation_equals_brute_force(flat: Gallery, data: tuple) -> None:
    entries, feats, centres = data
    for q in queries(centres, 5, seed=7):
        _, score, members = brute_force(entries, feats, q)
        res = flat.search(q, top_k=len(members), aggregate="mean", candidates=len(entries))
        assert [h.identity for h in res.identities] == identity_ranking(members, score, "mean")
        for hit in res.identities:
            want = float(np.mean([score[i] for i in members[hit.identity]]))
            assert hit.score == pytest.approx(want, abs=1e-5)


def test_ties_are_broken_by_int_id() -> None:
    v = unit(np.ones((1, DIM), dtype=np.float32))
    entries = [GalleryEntry(i, f"t{i}", name) for i, name in ((7, "a"), (3, "b"), (9, "b"), (1, "a"))]
    g = Gallery(DIM, graph_k=None)
    g.add(entries, np.repeat(v, 4, axis=0))
    for aggregate in ("max", "mean"):
        res = g.search(v[0], top_k=2, aggregate=aggregate)  # type: ignore[arg-type]
        assert result_ids(res) == [1, 3, 7, 9]
        assert [h.identity for h in res.identities] == ["a", "b"]  # "a" owns the lowest id, 1
        assert [[t.int_id for t in h.tracklets] for h in res.identities] == [[1, 7], [3, 9]]


# ---- filters ----------------------------------------------------------------------------------
FILTERS = [
    SearchFilter(platform="aerial"),
    SearchFilter(camera="c2"),
    SearchFilter(session="s2"),
    SearchFilter(exclude_identities={"id000", "id001", "id002", "id005"}),
    SearchFilter(exclude_camera="c1"),
    SearchFilter(platform="ground", camera="c3", session="s2"),
]


@pytest.mark.parametrize("filt", FILTERS, ids=lambda f: ",".join(f"{k}" for k, v in vars(f).items() if v))
def test_filters_are_correct_and_complete(flat: Gallery, data: tuple, filt: SearchFilter) -> None:
    entries, feats, centres = data
    for q in queries(centres, 4, seed=3):
        ranked, score, members = brute_force(entries, feats, q, filt)
        assert len(ranked) >= 5
        res = flat.search(q, top_k=len(members), filters=filt, candidates=len(ranked))
        assert result_ids(res) == ranked
        assert [h.identity for h in res.identities] == identity_ranking(members, score, "max")
        for hit in res.identities:
            assert [t.int_id for t in hit.tracklets] == members[hit.identity]
            assert all(filt.matches(flat.entry(t.int_id)) for t in hit.tracklets)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_selective_filter_falls_back_to_an_exact_scan(kind: str, data: tuple) -> None:
    entries, feats, _ = data
    # Three tracklets from a rare camera, all far from the query: the candidate pool misses them.
    q = feats[0]
    far = np.argsort(feats @ q)[:3]
    rare = [
        dataclasses.replace(entries[i], camera="rare") if i in far else entries[i]
        for i in range(len(entries))
    ]
    g = Gallery(DIM, kind=kind, graph_k=None, options=IndexOptions(filter_expansion=1))  # type: ignore[arg-type]
    g.add(rare, feats)
    res = g.search(q, top_k=10, filters=SearchFilter(camera="rare"), candidates=5)
    assert res.exhaustive
    want = sorted((int(rare[i].int_id) for i in far), key=lambda i: -float(feats[(i - 10) // 3] @ q))
    assert result_ids(res) == want
    assert sum(len(h.tracklets) for h in res.identities) == 3
    assert g.search(q, filters=SearchFilter(camera="nowhere")).identities == []


# ---- updates ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_remove(kind: str) -> None:
    entries, feats, centres = clustered(n_ids=20, per_id=6, seed=5)
    options = IndexOptions(nlist=4, nprobe=4, train_size=40, tombstone_ratio=0.5)
    g = Gallery(DIM, kind=kind, graph_k=None, options=options)  # type: ignore[arg-type]
    g.add(entries, feats)
    gone = [e.int_id for e in entries if e.identity == "id003"] + [entries[0].int_id, 999_999]
    assert g.remove(gone) == len(gone) - 1
    assert g.remove(gone) == 0
    assert len(g) == len(entries) - len(gone) + 1
    assert "id003" not in g.identities()
    assert g.int_id_of(entries[0].tracklet_id) is None and entries[0].int_id not in g
    for q in queries(centres, 5):
        res = g.search(q, top_k=30, candidates=len(entries))
        assert not set(result_ids(res)) & set(gone)
        assert len(res.tracklets) == len(g)  # every live item is still found
    assert g.remove_tracklets([entries[1].tracklet_id, "unknown"]) == 1
    # Removing and re-adding the same ids works for every kind (HNSW compacts its tombstones).
    back = [e for e in entries if e.identity == "id003"]
    g.add(back, feats[[entries.index(e) for e in back]])
    res = g.search(feats[entries.index(back[0])], top_k=1)
    assert res.identities[0].identity == "id003"


def test_hnsw_tombstones_trigger_a_rebuild() -> None:
    entries, feats, centres = clustered(n_ids=30, per_id=10, seed=2)
    g = Gallery(DIM, kind="hnsw", graph_k=None, options=IndexOptions(tombstone_ratio=0.2))
    g.add(entries, feats)
    backend = g._index
    g.remove([e.int_id for e in entries[:50]])  # 50/300 < 20%: tombstones only
    assert backend.index.ntotal == 300 and len(backend.tombstones) == 50  # type: ignore[attr-defined]
    g.remove([e.int_id for e in entries[50:70]])  # 70/300 > 20%: rebuilt from live vectors
    assert backend.index.ntotal == 230 and not backend.tombstones  # type: ignore[attr-defined]
    res = g.search(queries(centres, 1)[0], top_k=100, candidates=300)
    assert len(res.tracklets) == 230


# ---- approximate kinds -------------------------------------------------------------------------
def test_ivf_is_exact_until_trained_then_keeps_recall() -> None:
    entries, feats, centres = clustered(n_ids=100, per_id=10, seed=11, noise=0.5)
    options = IndexOptions(nlist=16, nprobe=4)  # trains at 39 * 16 = 624 vectors
    ivf = Gallery(DIM, kind="ivf", graph_k=None, options=options)
    exact = Gallery(DIM, kind="flat", graph_k=None)
    ivf.add(entries[:500], feats[:500])
    assert not ivf.trained
    q0 = queries(centres, 1)[0]
    early = ivf.search(q0, top_k=5)
    assert early.exhaustive
    exact.add(entries[:500], feats[:500])
    assert result_ids(early) == result_ids(exact.search(q0, top_k=5))
    ivf.add(entries[500:], feats[500:])
    exact.add(entries[500:], feats[500:])
    assert ivf.trained
    recalls = []
    for q in queries(centres, 30, seed=4):
        want = result_ids(exact.search(q, top_k=1, candidates=10))[:10]
        got = ivf.search(q, top_k=1, candidates=10)
        assert not got.exhaustive
        recalls.append(len(set(want) & set(result_ids(got)[:10])) / 10)
        assert got.identities[0].identity == exact.search(q, top_k=1).identities[0].identity
    assert np.mean(recalls) >= 0.9, np.mean(recalls)


def test_hnsw_recall_against_exact() -> None:
    entries, feats, centres = clustered(n_ids=100, per_id=10, seed=12, noise=0.5)
    hnsw = Gallery(DIM, kind="hnsw", graph_k=None)
    exact = Gallery(DIM, kind="flat", graph_k=None)
    hnsw.add(entries, feats)
    exact.add(entries, feats)
    recalls = []
    for q in queries(centres, 30, seed=6):
        want = result_ids(exact.search(q, top_k=1, candidates=10))[:10]
        got = hnsw.search(q, top_k=1, candidates=10)
        recalls.append(len(set(want) & set(result_ids(got)[:10])) / 10)
    assert np.mean(recalls) >= 0.95, np.mean(recalls)


# ---- validation -------------------------------------------------------------------------------
def test_bad_input_is_rejected_with_a_clear_message(flat: Gallery, data: tuple) -> None:
    entries, feats, _ = data
    g = Gallery(DIM, graph_k=None)
    with pytest.raises(ValueError, match=r"feats must have shape \[n, 32\]"):
        g.add(entries[:2], feats[:2, :10])
    with pytest.raises(ValueError, match=r"L2-normalised \(row 1\)"):
        g.add(entries[:2], np.stack([feats[0], 2 * feats[1]]))
    with pytest.raises(ValueError, match="3 rows for 2 entries"):
        g.add(entries[:2], feats[:3])
    with pytest.raises(ValueError, match="NaN"):
        g.add(entries[:1], np.full((1, DIM), np.nan, dtype=np.float32))
    g.add(entries[:2], feats[:2])
    with pytest.raises(ValueError, match="already in the gallery"):
        g.add(entries[1:3], feats[1:3])
    assert len(g) == 2  # the failed batch added nothing
    with pytest.raises(ValueError, match=r"query must have shape \[32\]"):
        flat.search(feats[:2])
    with pytest.raises(ValueError, match="L2-normalised"):
        flat.search(feats[0] * 3)
    with pytest.raises(ValueError, match="top_k"):
        flat.search(feats[0], top_k=0)
    with pytest.raises(ValueError, match="aggregate"):
        flat.search(feats[0], aggregate="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="graph_k=None"):
        flat.search(feats[0], rerank=RerankParams())
    with pytest.raises(ValueError, match="kind"):
        Gallery(DIM, kind="lsh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="use_gpu=True"):
        Gallery(DIM, kind="hnsw", use_gpu=True, graph_k=None)
    with pytest.raises(ValueError, match="platform"):
        SearchFilter(platform="space")
    with pytest.raises(ValueError, match="nlist"):
        IndexOptions(nlist=0)
    assert Gallery(DIM, graph_k=None).search(feats[0]).identities == []


# ---- store rebuild and snapshots -------------------------------------------------------------
def fill_store(store: Store, n_ids: int = 25, per_id: int = 6, seed: int = 9) -> list[Record]:
    entries, feats, _ = clustered(n_ids, per_id, seed=seed)
    records = [
        Record(
            tracklet_id=e.tracklet_id,
            identity=e.identity,
            camera=e.camera,
            platform=e.platform,  # type: ignore[arg-type]
            session=e.session,
            num_frames=8,
            fingerprint="ckpt-1",
            descriptor=f,
            content_hash=f"h-{e.tracklet_id}",
        )
        for e, f in zip(entries, feats, strict=True)
    ]
    return [r.record for r in store.put_many(records)]


def same_results(a: Gallery, b: Gallery, qs: np.ndarray, **kwargs: object) -> None:
    for q in qs:
        ra, rb = a.search(q, **kwargs), b.search(q, **kwargs)  # type: ignore[arg-type]
        assert result_ids(ra) == result_ids(rb)
        assert [(h.identity, h.score, [t.int_id for t in h.tracklets]) for h in ra.identities] == [
            (h.identity, h.score, [t.int_id for t in h.tracklets]) for h in rb.identities
        ]


@pytest.fixture(params=["sqlite", "redis"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path, redis_prefix: str) -> Iterator[Store]:
    if request.param == "sqlite":
        store: Store = SQLiteStore(tmp_path / "g.db")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        store = RedisStore(server.url, prefix=redis_prefix)
    yield store
    store.close()


def test_rebuild_from_store_gives_identical_results(any_store: Store) -> None:
    store = any_store
    records = fill_store(store)
    store.delete(records[3].tracklet_id)
    del records[3]
    direct = Gallery(DIM, graph_k=None)
    direct.add_records(records)
    rebuilt = Gallery.from_store(store, graph_k=None)
    assert len(rebuilt) == len(records)
    assert rebuilt.int_ids().tolist() == store.int_ids().tolist()
    qs = unit(np.random.default_rng(0).standard_normal((8, DIM)))
    same_results(direct, rebuilt, qs, top_k=10, filters=SearchFilter(exclude_camera="c1"))
    same_results(direct, rebuilt, qs, top_k=5, aggregate="mean")
    for r in records[:5]:
        np.testing.assert_array_equal(rebuilt.vectors([r.int_id])[0], r.descriptor)
    with pytest.raises(DimensionMismatch):
        Gallery(DIM + 1, graph_k=None).rebuild_from(store)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_snapshot_round_trip(tmp_path: Path, kind: str) -> None:
    options = IndexOptions(nlist=4, nprobe=2, train_size=60)
    with SQLiteStore(tmp_path / "g.db") as store:
        fill_store(store)
        snap = tmp_path / "snap"
        first = build_gallery(store, DIM, kind, graph_k=None, options=options, snapshot_dir=snap)  # type: ignore[arg-type]
        assert (snap / MANIFEST_FILE).exists()
        loaded, reason = load_snapshot(snap, store, DIM, kind, options, graph_k=None)  # type: ignore[arg-type]
        assert loaded is not None, reason
        assert loaded.trained == first.trained and (kind != "ivf" or loaded.trained)
        qs = unit(np.random.default_rng(1).standard_normal((6, DIM)))
        same_results(first, loaded, qs, top_k=10)
        # A loaded gallery keeps working: remove and add.
        loaded.remove(loaded.int_ids()[:3])
        assert len(loaded) == len(first) - 3


def test_snapshot_is_discarded_when_the_store_changed(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "g.db") as store:
        records = fill_store(store)
        snap = tmp_path / "snap"
        build_gallery(store, DIM, graph_k=None, snapshot_dir=snap)
        assert load_snapshot(snap, store, DIM, graph_k=None)[0] is not None

        # Another kind or dimension than the snapshot's is not loaded.
        assert "asked for kind=hnsw" in load_snapshot(snap, store, DIM, "hnsw", graph_k=None)[1]
        assert load_snapshot(snap, store, DIM + 1, graph_k=None)[0] is None

        extra = dataclasses.replace(records[0], tracklet_id="new", content_hash="h-new", int_id=None)
        store.put(extra)
        gallery, reason = load_snapshot(snap, store, DIM, graph_k=None)
        assert gallery is None and "store changed" in reason
        rebuilt = build_gallery(store, DIM, graph_k=None, snapshot_dir=snap)
        assert rebuilt.int_id_of("new") is not None and len(rebuilt) == len(records) + 1
        assert load_snapshot(snap, store, DIM, graph_k=None)[0] is not None  # rewritten

        # Same count, different ids: delete one, add one.
        store.delete(records[5].tracklet_id)
        store.put(dataclasses.replace(records[5], tracklet_id="new2", content_hash="h2", int_id=None))
        assert "store changed" in load_snapshot(snap, store, DIM, graph_k=None)[1]
        build_gallery(store, DIM, graph_k=None, snapshot_dir=snap)

        # Re-embedding changes the fingerprint of every pair.
        store.replace_descriptors("ckpt-2", {r.tracklet_id: r.descriptor for r in store.iter_records()})
        assert "store changed" in load_snapshot(snap, store, DIM, graph_k=None)[1]
        build_gallery(store, DIM, graph_k=None, snapshot_dir=snap)
        manifest = json.loads((snap / MANIFEST_FILE).read_text())
        assert manifest["fingerprint"] == "ckpt-2" and manifest["count"] == len(records) + 1

        # A torn or corrupted index file is detected by its checksum.
        data = bytearray((snap / INDEX_FILE).read_bytes())
        data[-1] ^= 0xFF
        (snap / INDEX_FILE).write_bytes(bytes(data))
        assert "checksums" in load_snapshot(snap, store, DIM, graph_k=None)[1]
        assert len(build_gallery(store, DIM, graph_k=None, snapshot_dir=snap)) == len(records) + 1


def test_save_snapshot_refuses_a_gallery_that_disagrees_with_the_store(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "g.db") as store:
        records = fill_store(store)
        g = Gallery(DIM, graph_k=None)
        g.add_records(records[:-1])
        with pytest.raises(ValueError, match="rebuild the gallery"):
            save_snapshot(g, store, tmp_path / "snap")


def test_concurrent_searches_and_updates() -> None:
    entries, feats, centres = clustered(n_ids=30, per_id=8, seed=21)
    g = Gallery(DIM, kind="hnsw", graph_k=None, options=IndexOptions(tombstone_ratio=0.05))
    g.add(entries[:120], feats[:120])
    errors: list[BaseException] = []
    qs = queries(centres, 20, seed=2)
    stop = threading.Event()

    def searcher() -> None:
        try:
            while not stop.is_set():
                for q in qs:
                    res = g.search(q, top_k=5, filters=SearchFilter(exclude_camera="c2"))
                    assert all(h.camera != "c2" for h in res.tracklets)
                    assert [h.rank for h in res.identities] == list(range(1, len(res.identities) + 1))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for start in range(120, len(entries), 10):
            g.add(entries[start : start + 10], feats[start : start + 10])  # new ids
            g.remove([entries[start - 120].int_id])  # tombstones and compactions under load
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert len(g) == len(entries) - 12
    res = g.search(qs[0], top_k=100, candidates=len(entries))
    assert len(res.tracklets) == len(g)


# ---- re-ranking -------------------------------------------------------------------------------
def test_rerank_with_whole_gallery_as_candidates_equals_exact_k_reciprocal() -> None:
    from index.rerank import k_reciprocal

    entries, feats, centres = clustered(n_ids=15, per_id=6, seed=31)
    g = Gallery(DIM, graph_k=20)
    g.add(entries[:50], feats[:50])
    g.add(entries[50:], feats[50:])  # the graph is maintained incrementally
    params = RerankParams(k1=20, k2=6, lambda_value=0.3)
    ids = np.array([e.int_id for e in entries])
    for q in queries(centres, 3, seed=8):
        res = g.search(q, top_k=15, rerank=params, candidates=len(entries))
        assert res.reranked and len(res.tracklets) == len(entries)
        want = k_reciprocal(q[None], feats, k1=20, k2=6, lambda_value=0.3)[0]
        got = {h.int_id: h for h in res.tracklets}
        np.testing.assert_allclose([got[i].rerank_distance for i in ids], want, atol=1e-4)
        for h in res.tracklets:
            assert h.score == pytest.approx(1.0 - h.rerank_distance, abs=1e-7)  # type: ignore[operator]
            assert h.cosine == pytest.approx(float(feats[(h.int_id - 10) // 3] @ q), abs=1e-5)
        assert [h.score for h in res.tracklets] == sorted((h.score for h in res.tracklets), reverse=True)
        for hit in res.identities:  # max aggregation over the re-ranked scores
            assert hit.score == max(t.score for t in hit.tracklets)


def test_rerank_follows_updates_filters_and_snapshots(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "g.db") as store:
        records = fill_store(store, n_ids=20, per_id=5, seed=33)
        g = build_gallery(store, DIM, graph_k=10, snapshot_dir=tmp_path / "snap")
        params = RerankParams(k1=8, k2=3)
        q = records[0].descriptor.copy()
        res = g.search(q, top_k=5, rerank=params, candidates=30)
        assert res.identities[0].identity == records[0].identity
        assert len(res.tracklets) >= 30

        filt = SearchFilter(exclude_identities={records[0].identity}, platform="ground")
        res = g.search(q, top_k=5, rerank=params, candidates=20, filters=filt, aggregate="mean")
        assert all(filt.matches(g.entry(h.int_id)) for h in res.tracklets)  # type: ignore[arg-type]
        for hit in res.identities:
            assert hit.score == pytest.approx(float(np.mean([t.score for t in hit.tracklets])), abs=1e-6)

        # The graph forgets removed items: re-ranking never sees them.
        gone = [r.int_id for r in records if r.identity == records[0].identity]
        g.remove(gone)
        res = g.search(q, top_k=5, rerank=params, candidates=30)
        assert not {h.int_id for h in res.tracklets} & set(gone)

        # A gallery loaded from the snapshot rebuilds its graph from the indexed vectors.
        loaded, reason = load_snapshot(tmp_path / "snap", store, DIM, graph_k=10)
        assert loaded is not None, reason
        original = build_gallery(store, DIM, graph_k=10)
        for qq in (records[3].descriptor, records[40].descriptor):
            a = loaded.search(qq, top_k=5, rerank=params, candidates=25)
            b = original.search(qq, top_k=5, rerank=params, candidates=25)
            assert [(h.int_id, h.rerank_distance) for h in a.tracklets] == [
                (h.int_id, h.rerank_distance) for h in b.tracklets
            ]

        with pytest.raises(ValueError, match="k1=11 exceeds"):
            g.search(q, rerank=RerankParams(k1=11))
