"""Identity ranking: ordering tracklet hits and aggregating them into ranked identities."""

from __future__ import annotations

import numpy as np

from index.types import IdentityHit, TrackletHit


def sort_hits(hits: list[TrackletHit]) -> list[TrackletHit]:
    """Hits by score, best first; ties go to the lower int id."""
    return sorted(hits, key=lambda h: (-h.score, h.int_id))


def group_by_identity(ranked: list[TrackletHit]) -> dict[str, list[TrackletHit]]:
    """Sorted hits -> identity -> its hits (still sorted), identities in first-appearance order."""
    groups: dict[str, list[TrackletHit]] = {}
    for h in ranked:
        groups.setdefault(h.identity, []).append(h)
    return groups


def rank_identities(groups: dict[str, list[TrackletHit]], top_k: int, aggregate: str) -> list[IdentityHit]:
    """The ``top_k`` best identities; an identity's score is the ``max`` (its best hit) or the
    ``mean`` of its hits' scores. ``groups`` lists are sorted best first; ties between identities go
    to the lower best int id."""
    scored = []
    for name, hits in groups.items():
        if aggregate == "max":
            score = hits[0].score
        else:
            score = float(np.mean(np.array([h.score for h in hits], dtype=np.float64)))
        scored.append((-score, hits[0].int_id, name, score, hits))
    scored.sort(key=lambda t: (t[0], t[1]))
    return [
        IdentityHit(rank=r, identity=name, score=score, tracklets=hits)
        for r, (_, _, name, score, hits) in enumerate(scored[:top_k], start=1)
    ]
