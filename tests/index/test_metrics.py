"""evaluate_rank against a slow, literal implementation of the market-1501 protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from index import metrics
from index.metrics import RankResult, evaluate_rank, mean_ap_pooled


def reference_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Per query: stable sort, drop junk, then AP / CMC / INP straight from their definitions."""
    aps, inps, cmcs = [], [], []
    ap_all = np.full(len(q_pids), np.nan)
    for i in range(len(q_pids)):
        order = np.argsort(distmat[i], kind="stable")
        junk = (g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])
        match = (g_pids[order] == q_pids[i])[~junk]
        if not match.any():
            continue
        hits = np.flatnonzero(match)
        precisions = [(n + 1) / (pos + 1) for n, pos in enumerate(hits)]
        ap_all[i] = np.mean(precisions)
        aps.append(ap_all[i])
        inps.append(len(hits) / (hits[-1] + 1))
        cmc = np.array([1.0 if hits[0] <= r else 0.0 for r in range(max_rank)])
        cmcs.append(cmc)
    if not aps:
        return float("nan"), np.full(max_rank, np.nan), float("nan"), 0, ap_all
    return float(np.mean(aps)), np.mean(cmcs, axis=0), float(np.mean(inps)), len(aps), ap_all


def assert_matches_reference(result: RankResult, args, max_rank):
    m_ap, cmc, m_inp, n_valid, ap = reference_rank(*args, max_rank)
    assert result.num_valid_queries == n_valid
    assert result.cmc.shape == (max_rank,)
    np.testing.assert_allclose(result.mAP, m_ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.mINP, m_inp, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.cmc, cmc, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.ap, ap, rtol=0, atol=1e-12)


def random_case(rng, num_q, num_g, levels, num_ids=15, cams=3):
    """Quantised distances (many ties), distractors (pid -1) and queries whose identity is absent."""
    q_pids = rng.integers(0, num_ids + 4, num_q)  # ids >= num_ids never appear in the gallery
    g_pids = rng.integers(-1, num_ids, num_g)
    q_cams = rng.integers(0, cams, num_q)
    g_cams = rng.integers(0, cams, num_g)
    dist = np.floor(rng.random((num_q, num_g)) * levels) / levels
    return dist, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("levels", [3, 10, 1000])
@pytest.mark.parametrize("num_g", [8, 40, 300])
def test_matches_reference_with_ties_and_short_galleries(levels, num_g):
    rng = np.random.default_rng(levels * 1000 + num_g)
    args = random_case(rng, 60, num_g, levels)
    for dtype in (np.float32, np.float64):
        d = args[0].astype(dtype)
        assert_matches_reference(evaluate_rank(d, *args[1:], max_rank=50), (d, *args[1:]), 50)


def test_matches_reference_over_many_chunks_and_threads(monkeypatch):
    rng = np.random.default_rng(7)
    args = random_case(rng, 200, 500, levels=50, num_ids=40, cams=4)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMS", 3000)  # 6 queries per chunk, so ~34 chunks
    assert_matches_reference(evaluate_rank(*args, max_rank=20), args, 20)


def test_torch_inputs_and_string_labels():
    rng = np.random.default_rng(3)
    dist, qp, gp, qc, gc = random_case(rng, 30, 120, levels=20)
    expected = evaluate_rank(dist, qp, gp, qc, gc, max_rank=10)
    got = evaluate_rank(
        torch.from_numpy(dist).float(),
        torch.from_numpy(qp),
        torch.from_numpy(gp),
        torch.from_numpy(qc),
        gc,
        max_rank=10,
    )
    np.testing.assert_allclose(got.ap, expected.ap)
    names = np.array([f"person{p}" for p in range(-1, 30)])
    got = evaluate_rank(dist, names[qp + 1], names[gp + 1], [f"c{c}" for c in qc], [f"c{c}" for c in gc], 10)
    np.testing.assert_allclose(got.ap, expected.ap)
    np.testing.assert_allclose(got.cmc, expected.cmc)


def test_hand_worked_example():
    # Gallery order by distance: 0 (junk: same id, same cam), 1 (neg), 2 (pos), 3 (neg), 4 (pos).
    dist = np.array([[0.0, 0.1, 0.2, 0.3, 0.4]])
    r = evaluate_rank(dist, [7], [7, 1, 7, -1, 7], [0], [0, 1, 1, 2, 2], max_rank=3)
    # Kept ranking: neg, pos, neg, pos -> precisions 1/2 and 2/4.
    assert r.mAP == pytest.approx(0.5)
    assert r.mINP == pytest.approx(2 / 4)
    np.testing.assert_array_equal(r.cmc, [0.0, 1.0, 1.0])
    assert r.num_valid_queries == 1


def test_ties_break_by_gallery_index():
    dist = np.zeros((1, 3))
    # All at distance 0: index order decides. Positive at index 1 ranks after the negative at 0.
    r = evaluate_rank(dist, [5], [2, 5, 3], [0], [1, 1, 1], max_rank=3)
    assert r.mAP == pytest.approx(0.5)
    np.testing.assert_array_equal(r.cmc, [0.0, 1.0, 1.0])
    r = evaluate_rank(dist, [5], [5, 2, 3], [0], [1, 1, 1], max_rank=3)
    assert r.mAP == pytest.approx(1.0)


def test_skipped_queries_and_all_skipped():
    dist = np.array([[0.1, 0.2], [0.3, 0.1]])
    # Query 0's only match shares its camera (junk); query 1's identity is absent.
    r = evaluate_rank(dist, [1, 9], [1, 2], [0, 0], [0, 1], max_rank=5)
    assert r.num_valid_queries == 0
    assert r.num_skipped_queries == 2
    assert np.isnan(r.mAP) and np.isnan(r.mINP)
    assert np.isnan(r.ap).all()
    assert mean_ap_pooled([r]) != mean_ap_pooled([r])  # NaN


def test_pooled_map_is_query_weighted():
    rng = np.random.default_rng(11)
    a = random_case(rng, 20, 100, levels=100)
    b = random_case(rng, 50, 80, levels=100)
    ra, rb = evaluate_rank(*a), evaluate_rank(*b)
    pooled = np.concatenate([ra.ap, rb.ap])
    assert mean_ap_pooled([ra, rb]) == pytest.approx(np.nanmean(pooled))
    assert ra.num_valid_queries != rb.num_valid_queries  # so pooled differs from the plain mean
    assert mean_ap_pooled([ra, rb]) != pytest.approx((ra.mAP + rb.mAP) / 2)


def test_bad_inputs_raise_clear_errors():
    dist = np.zeros((2, 3))
    with pytest.raises(ValueError, match="g_pids has length 2"):
        evaluate_rank(dist, [1, 2], [1, 2], [0, 0], [0, 0, 0])
    with pytest.raises(ValueError, match="q_camids has length 1"):
        evaluate_rank(dist, [1, 2], [1, 2, 3], [0], [0, 0, 0])
    with pytest.raises(ValueError, match="2-D"):
        evaluate_rank(np.zeros(3), [1], [1, 2, 3], [0], [0, 0, 0])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_rank(np.array([[np.nan, 0, 0], [0, 0, 0]]), [1, 2], [1, 2, 3], [0, 0], [0, 0, 0])
    with pytest.raises(ValueError, match="max_rank"):
        evaluate_rank(dist, [1, 2], [1, 2, 3], [0, 0], [0, 0, 0], max_rank=0)
    with pytest.raises(ValueError, match="1-D"):
        evaluate_rank(dist, [[1, 2]], [1, 2, 3], [0, 0], [0, 0, 0])
