"""Turning query options into a gallery search, and the search result into the API's ranking.

Filters: ``platform``, ``camera`` and ``session`` keep only gallery tracklets with that value;
``since`` / ``until`` keep those enrolled in ``[since, until)`` (``created_at``);
``exclude_same_camera`` drops gallery tracklets recorded by the query's camera (``query_camera``,
which a ``tracklet_id`` query takes from the stored tracklet unless given).

Query by enrolled tracklet: the tracklet is removed from its own results. The gallery is asked for
one identity more than ``top_k``; the query tracklet is then dropped from its identity's list and
that identity's score recomputed from its remaining tracklets (it disappears if it has none). With
``max`` aggregation and no re-ranking this is exactly the ranking of the gallery without the query
tracklet; with re-ranking, the query tracklet still takes part in the k-reciprocal neighbourhoods
of the candidates (it is a gallery item), it is only removed from the answer.

Timing: the gallery is searched once and reports its own stages (``Gallery.search``'s
``timings``: index, pool, rerank, aggregate), kept in ``SearchOutcome.stages``. ``rerank`` is its
rerank stage (0 without re-ranking); ``search`` the rest of that one gallery call (index search,
candidate scoring, aggregation, and waiting for the gallery's lock).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from index.gallery import Gallery
from index.rerank import RerankParams
from index.types import IdentityHit, SearchFilter, TrackletHit
from service.core.config import Settings
from service.core.errors import ApiError
from service.schemas import IdentityResult, QueryOptions, TrackletScore


@dataclass(frozen=True)
class SearchOutcome:
    """The API's ranking, and what the search cost: ``stages`` are the gallery's own stage timings
    in ms (``index.gallery.SEARCH_STAGES``, those that ran)."""

    results: list[IdentityResult]
    reranked: bool
    search_ms: float
    rerank_ms: float
    stages: dict[str, float] = field(default_factory=dict)


def time_range(start: float | None, end: float | None) -> tuple[float | None, float | None]:
    """``since`` / ``until`` (unix seconds), checked: 422 when the range is empty."""
    if start is not None and end is not None and start >= end:
        raise ApiError(
            422,
            "invalid_time_range",
            f"since ({start:.6f}) must be before until ({end:.6f}): the range [since, until) is empty",
            field="until",
        )
    return start, end


def build_filter(options: QueryOptions, query_camera: str | None) -> SearchFilter | None:
    if options.exclude_same_camera and query_camera is None:
        raise ApiError(
            422,
            "missing_query_camera",
            "exclude_same_camera needs the query's camera: send query_camera (the camera that recorded the "
            "query), or query with an enrolled tracklet that has a camera",
            field="query_camera",
        )
    created_from, created_to = time_range(options.since, options.until)
    filt = SearchFilter(
        platform=options.platform,
        camera=options.camera,
        session=options.session,
        exclude_camera=query_camera if options.exclude_same_camera else None,
        created_from=created_from,
        created_to=created_to,
    )
    return filt if filt.active else None


def build_rerank(options: QueryOptions, settings: Settings) -> RerankParams | None:
    if not options.rerank:
        return None
    if settings.rerank_graph_k is None:
        raise ApiError(
            422,
            "rerank_disabled",
            "re-ranking is disabled on this server (SASREID_GRAPH_K=0); query without rerank",
            field="rerank",
        )
    k1 = options.k1 if options.k1 is not None else settings.rerank_k1
    if k1 > settings.graph_k:
        raise ApiError(
            422, "invalid_rerank", f"k1={k1} exceeds the gallery neighbour graph's k={settings.graph_k}", field="k1"
        )
    k2 = options.k2 if options.k2 is not None else settings.rerank_k2
    # k2 averages over a row's neighbour list, which holds graph_k neighbours and the row itself.
    if k2 > settings.graph_k + 1:
        raise ApiError(
            422,
            "invalid_rerank",
            f"k2={k2} exceeds the gallery neighbour graph's k + 1 = {settings.graph_k + 1}",
            field="k2",
        )
    return RerankParams(
        k1=k1,
        k2=k2,
        lambda_value=options.lambda_value if options.lambda_value is not None else settings.rerank_lambda,
    )


def _without(hits: list[IdentityHit], tracklet_id: str, top_k: int, aggregate: str) -> list[IdentityHit]:
    kept: list[tuple[float, int, str, list[TrackletHit]]] = []
    for hit in hits:
        tracklets = [t for t in hit.tracklets if t.tracklet_id != tracklet_id]
        if not tracklets:
            continue
        if len(tracklets) == len(hit.tracklets):
            score = hit.score
        elif aggregate == "max":
            score = tracklets[0].score
        else:
            score = float(np.mean(np.array([t.score for t in tracklets], dtype=np.float64)))
        kept.append((score, tracklets[0].int_id, hit.identity, tracklets))
    kept.sort(key=lambda k: (-k[0], k[1]))
    return [
        IdentityHit(rank=r, identity=name, score=score, tracklets=tracklets)
        for r, (score, _, name, tracklets) in enumerate(kept[:top_k], start=1)
    ]


@dataclass(frozen=True)
class SearchPlan:
    """Validated search parameters, built before any decoding or embedding is spent on a query."""

    top_k: int
    aggregate: str
    filters: SearchFilter | None
    rerank: RerankParams | None
    exclude_tracklet: str | None


def plan_search(
    options: QueryOptions, settings: Settings, query_camera: str | None, exclude_tracklet: str | None = None
) -> SearchPlan:
    """Check the options against the settings (422 ``ApiError`` when they cannot be served)."""
    if options.top_k > settings.max_top_k:
        raise ApiError(422, "invalid_request", f"top_k must be at most {settings.max_top_k}", field="top_k")
    return SearchPlan(
        top_k=options.top_k,
        aggregate=options.aggregate,
        filters=build_filter(options, query_camera),
        rerank=build_rerank(options, settings),
        exclude_tracklet=exclude_tracklet,
    )


def run_search(gallery: Gallery, settings: Settings, descriptor: np.ndarray, plan: SearchPlan) -> SearchOutcome:
    """Search the gallery (blocking; call from a worker thread)."""
    want = plan.top_k + (1 if plan.exclude_tracklet is not None else 0)
    candidates = max(settings.search_candidates, want)
    aggregate = plan.aggregate  # type: ignore[assignment]

    stages: dict[str, float] = {}
    start = time.perf_counter()
    result = gallery.search(descriptor, top_k=want, filters=plan.filters, rerank=plan.rerank, aggregate=aggregate,
                            candidates=candidates, timings=stages)
    rerank_ms = stages.get("rerank", 0.0)
    search_ms = max(0.0, (time.perf_counter() - start) * 1e3 - rerank_ms)

    identities = result.identities
    if plan.exclude_tracklet is not None:
        identities = _without(identities, plan.exclude_tracklet, plan.top_k, plan.aggregate)
    results = [
        IdentityResult(
            rank=hit.rank,
            identity=hit.identity,
            score=hit.score,
            tracklets=[
                TrackletScore(tracklet_id=t.tracklet_id, score=t.score, camera=t.camera, platform=t.platform)  # type: ignore[arg-type]
                for t in hit.tracklets
            ],
        )
        for hit in identities[: plan.top_k]
    ]
    return SearchOutcome(results=results, reranked=result.reranked, search_ms=search_ms, rerank_ms=rerank_ms,
                         stages=stages)
