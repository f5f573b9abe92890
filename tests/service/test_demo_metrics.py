"""The demo's metrics from API answers: the cross-session split and the same-outfit queries its
contact sheet shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.data.tracklet import Tracklet
from service.demo import ApiRanking, metrics_from_api, same_outfit_queries, top5_summary


def rec(pid: int, cam: int, name: str, session: int) -> Tracklet:
    return Tracklet(paths=(Path(f"/nonexistent/{name}.jpg"),), pid=pid, camera=cam, platform="ground",
                    session=session, tracklet_id=name)


QUERIES = [rec(1, 0, "q1", 1), rec(2, 0, "q2", 2)]
GALLERY = [rec(1, 1, "g_same", 1), rec(2, 1, "g_other_id", 1), rec(1, 2, "g_changed", 2), rec(3, 1, "g_neg", 2)]


def test_metrics_from_api_split_by_session():
    # q1's answers: same-outfit positive, negative, clothing-changed positive; g_neg never returned.
    # q2's answers: its only positive (clothing changed, session 1 vs 2) second.
    ranking = ApiRanking(ids=[["g_same", "g_other_id", "g_changed"], ["g_neg", "g_other_id"]],
                         scores=[[0.9, 0.8, 0.7], [0.9, 0.5]])
    all_pos = metrics_from_api(ranking, QUERIES, GALLERY)
    assert all_pos.ap[0] == pytest.approx((1 + 2 / 3) / 2) and all_pos.ap[1] == pytest.approx(1 / 2)
    changed = metrics_from_api(ranking, QUERIES, GALLERY, keep="other-session")
    assert changed.ap[0] == pytest.approx(1 / 2)  # g_same is junk: kept g_other_id, g_changed
    assert changed.ap[1] == pytest.approx(1 / 2)
    same = metrics_from_api(ranking, QUERIES, GALLERY, keep="same-session")
    assert same.num_valid_queries == 1 and same.ap[0] == pytest.approx(1.0)


def test_same_outfit_queries_need_a_positive_in_their_session():
    assert same_outfit_queries(QUERIES, GALLERY) == [0]
    assert same_outfit_queries(QUERIES, GALLERY[2:]) == []


def test_top5_summary_counts_first_found_and_possible():
    g = {t.tracklet_id: t for t in GALLERY}
    rows = [
        (QUERIES[0], [g["g_same"], g["g_other_id"], g["g_changed"], g["g_neg"]]),  # right first, 2 correct
        (QUERIES[1], [g["g_neg"], g["g_same"], g["g_other_id"]]),  # found at rank 3, 1 correct
    ]
    text = top5_summary(rows, positives=[2, 7])
    assert "ranked first for 1 of 2 queries and within the top 5 for 2" in text
    # 3 correct; at most min(5, 2) + min(5, 7) = 7 could be
    assert "3 of 10 answers are the query's identity, of at most 7 possible" in text
    assert "2-7 tracklets per query identity" in text
