"""The milvus index on a real milvus-lite: same answers as exact FAISS, filters in Milvus, state kept
across reopening, reconciliation with the store after a partial write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index.gallery import Gallery
from index.milvus_index import MilvusIndex, collection_name, milvus_filter
from index.rerank import RerankParams
from index.store import Record, SQLiteStore
from index.types import GalleryEntry, SearchFilter

pytest.importorskip("pymilvus", reason="the milvus extra is not installed (pip install '.[milvus]')")

DIM = 16


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def items(n: int = 60, seed: int = 0) -> tuple[list[GalleryEntry], np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, DIM))
    feats = unit(centres[np.arange(n) % 12] + 0.5 * rng.normal(size=(n, DIM)))
    entries = [
        GalleryEntry(
            int_id=i,
            tracklet_id=f"t{i}",
            identity=f"p{i % 12}",
            camera=('cam "q"' if i % 3 == 0 else "c\\2") if i % 4 else None,
            platform=("aerial", "ground", None)[i % 3],
            session=f"s{i % 2}",
            created_at=1000.0 + i,
        )
        for i in range(n)
    ]
    return entries, feats


def answers(g: Gallery, q: np.ndarray, filt: SearchFilter | None, rerank: RerankParams | None = None):
    res = g.search(q, top_k=5, filters=filt, rerank=rerank, candidates=20)
    return [(h.identity, [t.tracklet_id for t in h.tracklets], round(h.score, 5)) for h in res.identities]


FILTERS = [
    None,
    SearchFilter(platform="aerial"),
    SearchFilter(camera='cam "q"'),
    SearchFilter(exclude_camera="c\\2", session="s1"),
    SearchFilter(exclude_identities=frozenset({"p0", "p3"})),
    SearchFilter(created_from=1010.0, created_to=1030.0),
]


def test_filter_expression_quotes_values() -> None:
    assert milvus_filter(None) == ""
    expr = milvus_filter(SearchFilter(camera='a"b', exclude_identities=frozenset({"x"}), created_to=5))
    assert expr == 'camera == "a\\"b" and identity not in ["x"] and created_at < 5.0'
    assert collection_name("ab-12.cd") == "sasreid_gallery_ab_12_cd"


def test_milvus_answers_equal_exact_faiss_and_survive_reopening(tmp_path: Path) -> None:
    uri = str(tmp_path / "milvus.db")
    entries, feats = items()
    with SQLiteStore(tmp_path / "s.sqlite") as store:
        stored = [store.put(record(e, f)).record for e, f in zip(entries, feats, strict=True)]
        flat = Gallery(DIM, kind="flat", use_gpu=False, graph_k=10)
        milvus = Gallery(DIM, kind="milvus", graph_k=10, index_params={"uri": uri})
        assert milvus.durable
        for g in (flat, milvus):
            g.add_records(stored)
            g.remove_tracklets(["t5", "t17"])
        store.delete("t5")
        store.delete("t17")
        rng = np.random.default_rng(1)
        queries = unit(feats[:4] + 0.3 * rng.normal(size=(4, DIM)))
        for q in queries:
            for filt in FILTERS:
                assert answers(milvus, q, filt) == answers(flat, q, filt), filt
            assert answers(milvus, q, None, RerankParams()) == answers(flat, q, None, RerankParams())
        milvus.close()

        # A new client on the same file holds the vectors: reconciling with the store writes nothing,
        # and the answers are those of before.
        again = Gallery(DIM, kind="milvus", graph_k=10, index_params={"uri": uri})
        assert again.reconcile(store) == (0, 0)
        assert len(again) == 58 and sorted(again._index.ids().tolist()) == sorted(r.int_id for r in store.iter_records())
        for q in queries:
            for filt in FILTERS:
                assert answers(again, q, filt) == answers(flat, q, filt), filt
            assert answers(again, q, None, RerankParams()) == answers(flat, q, None, RerankParams())
        again.close()


def record(e: GalleryEntry, f: np.ndarray) -> Record:
    return Record(
        tracklet_id=e.tracklet_id,
        identity=e.identity,
        num_frames=1,
        fingerprint="fp",
        descriptor=f,
        content_hash=e.tracklet_id,
        camera=e.camera,
        platform=e.platform,  # type: ignore[arg-type]
        session=e.session,
        created_at=e.created_at if e.created_at is not None else 0.0,
    )


def test_reconcile_adds_what_only_the_store_has_and_drops_what_it_lost(tmp_path: Path) -> None:
    entries, feats = items(30)
    with SQLiteStore(tmp_path / "s.sqlite") as store:
        gallery = Gallery(DIM, kind="milvus", graph_k=None, index_params={"uri": str(tmp_path / "m.db")})
        for e, f in zip(entries[:20], feats[:20], strict=True):
            gallery.add_records([store.put(record(e, f)).record])
        for e, f in zip(entries[20:], feats[20:], strict=True):
            store.put(record(e, f))  # stored, then "crashed" before the index write
        store.delete("t3")  # deleted in the store, "crashed" before the index delete
        assert gallery.reconcile(store) == (10, 1)
        ids = {r.int_id for r in store.iter_records()}
        assert set(gallery._index.ids().tolist()) == ids and len(gallery) == 29
        hit = gallery.search(feats[25], top_k=1).identities[0].tracklets[0]
        assert hit.tracklet_id == "t25"
        gallery.close()


def test_a_collection_of_another_dimension_is_refused(tmp_path: Path) -> None:
    uri = str(tmp_path / "m.db")
    MilvusIndex(DIM, Gallery(DIM, graph_k=None).options, uri=uri).close()
    with pytest.raises(ValueError, match="16-d vectors, expected 8-d"):
        MilvusIndex(8, Gallery(8, graph_k=None).options, uri=uri)
    with pytest.raises(ValueError, match="needs a URI"):
        MilvusIndex(DIM, Gallery(DIM, graph_k=None).options)
