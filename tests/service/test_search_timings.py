"""run_search searches the gallery once per query and passes the gallery's own stage timings through.

Issue 12, speed item 1: a re-ranked query used to run the index search twice (a plain search only
to time it, then the re-ranked one). The index here is the real flat FAISS index, subclassed to
count its searches; answers are compared with the gallery's own re-ranked search.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from index.faiss_index import FlatIndex
from index.gallery import SEARCH_STAGES, Gallery
from index.types import GalleryEntry, IndexOptions, SearchFilter
from service.core.config import Settings
from service.schemas import QueryOptions
from service.search import _without, plan_search, run_search

DIM = 16
GRAPH_K = 8


class CountingFlatIndex(FlatIndex):
    """The flat index, counting calls of ``search``."""

    def __init__(self, dim: int, options: IndexOptions) -> None:
        super().__init__(dim, options, use_gpu=False)
        self.searches = 0

    def search(self, query: np.ndarray, k: int, where: SearchFilter | None = None) -> np.ndarray:
        self.searches += 1
        return super().search(query, k, where)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def gallery() -> tuple[Gallery, CountingFlatIndex, np.ndarray]:
    """60 tracklets of 12 clustered identities over a counting flat index, with a graph k = 8."""
    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((12, DIM)))
    labels = np.repeat(np.arange(12), 5)
    feats = unit(centres[labels] + 0.3 * rng.standard_normal((60, DIM)).astype(np.float32))
    index = CountingFlatIndex(DIM, IndexOptions())
    g = Gallery(DIM, kind="flat", graph_k=GRAPH_K, index=index)
    g.add(
        [
            GalleryEntry(int_id=i, tracklet_id=f"t{i}", identity=f"p{int(p)}", camera=f"c{i % 3}")
            for i, p in enumerate(labels)
        ],
        feats,
    )
    return g, index, feats


def settings(candidates: int) -> Settings:
    return Settings(
        _env_prefix="SASREID_TEST_UNUSED_",  # type: ignore[call-arg]
        auth=False,
        graph_k=GRAPH_K,
        rerank_k1=3,
        rerank_k2=2,
        search_candidates=candidates,
    )


@pytest.mark.parametrize("rerank", [False, True])
@pytest.mark.parametrize("by_tracklet", [False, True])
def test_run_search_searches_the_index_once_and_reports_the_stages_that_ran(
    gallery: tuple[Gallery, CountingFlatIndex, np.ndarray], rerank: bool, by_tracklet: bool
) -> None:
    g, index, feats = gallery
    s = settings(candidates=30)
    plan = plan_search(QueryOptions(top_k=5, rerank=rerank), s, None, exclude_tracklet="t7" if by_tracklet else None)
    before = index.searches
    outcome = run_search(g, s, feats[7], plan)
    assert index.searches - before == 1
    assert outcome.reranked is rerank
    ran = [stage for stage in SEARCH_STAGES if rerank or stage != "rerank"]
    assert list(outcome.stages) == ran
    assert all(ms >= 0.0 for ms in outcome.stages.values())
    assert outcome.rerank_ms == (outcome.stages["rerank"] if rerank else 0.0)
    # search_ms is the rest of the one gallery call, which holds its other stages.
    assert outcome.search_ms >= sum(ms for stage, ms in outcome.stages.items() if stage != "rerank") - 1e-6


@pytest.mark.parametrize("aggregate", ["max", "mean"])
def test_run_search_answers_are_the_gallerys_reranked_ranking(
    gallery: tuple[Gallery, CountingFlatIndex, np.ndarray], aggregate: str
) -> None:
    """What the second (re-ranked) search of the old run_search returned, without its first search."""
    g, _, feats = gallery
    s = settings(candidates=30)
    for query in (3, 17, 42):
        plan = plan_search(
            QueryOptions(top_k=6, rerank=True, aggregate=aggregate),  # type: ignore[arg-type]
            s,
            None,
            exclude_tracklet=f"t{query}",
        )
        outcome = run_search(g, s, feats[query], plan)
        assert plan.rerank is not None
        want = g.search(feats[query], top_k=7, rerank=plan.rerank, aggregate=aggregate, candidates=30)  # type: ignore[arg-type]
        expected = _without(want.identities, f"t{query}", 6, aggregate)
        assert [(r.identity, r.score, [(t.tracklet_id, t.score) for t in r.tracklets]) for r in outcome.results] == [
            (h.identity, h.score, [(t.tracklet_id, t.score) for t in h.tracklets]) for h in expected
        ]
        assert f"t{query}" not in {t.tracklet_id for r in outcome.results for t in r.tracklets}


def test_gallery_search_timings_without_a_pool(gallery: tuple[Gallery, CountingFlatIndex, np.ndarray]) -> None:
    """An empty gallery stops before any stage; timings are optional and change no answer."""
    g, _, feats = gallery
    empty = Gallery(DIM, graph_k=GRAPH_K)
    timings: dict[str, float] = {}
    assert empty.search(feats[0], timings=timings).identities == []
    assert timings == {}
    timed = g.search(feats[0], top_k=4, candidates=20, timings=timings)
    assert list(timings) == ["index", "pool", "aggregate"]
    assert timed == g.search(feats[0], top_k=4, candidates=20)


def test_concurrent_reranked_searches_equal_sequential_ones(
    gallery: tuple[Gallery, CountingFlatIndex, np.ndarray],
) -> None:
    """Re-ranked searches run side by side under the read lock (no graph lock of their own since
    issue 12): four threads searching at once get exactly the sequential answers."""
    g, _, feats = gallery
    s = settings(candidates=30)
    plans = [
        plan_search(QueryOptions(top_k=5, rerank=True, k1=k1, k2=k2), s, None, exclude_tracklet=f"t{q}")
        for q, (k1, k2) in zip(range(0, 60, 3), [(3, 2), (8, 6), (5, 1), (2, 2)] * 5, strict=True)
    ]
    queries = list(range(0, 60, 3))
    want = [run_search(g, s, feats[q], plan).results for q, plan in zip(queries, plans, strict=True)]
    got: dict[tuple[int, int], object] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def searcher(worker: int) -> None:
        try:
            start.wait()
            for rep in range(5):
                for n, (q, plan) in enumerate(zip(queries, plans, strict=True)):
                    if (n + worker + rep) % 2 == 0:  # workers interleave different queries
                        got[(worker * 100 + rep, n)] = run_search(g, s, feats[q], plan).results
        except BaseException as exc:  # reported below, from the main thread
            errors.append(exc)

    threads = [threading.Thread(target=searcher, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(got) == 4 * 5 * len(queries) // 2
    for (_, n), results in got.items():
        assert results == want[n]
