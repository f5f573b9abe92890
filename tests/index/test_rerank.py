"""k_reciprocal against a dense transcription of the original algorithm; GalleryNeighborGraph against
brute force and against k_reciprocal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from index import neighbor_graph, rerank
from index.metrics import evaluate_rank
from index.neighbor_graph import GalleryNeighborGraph
from index.rerank import k_reciprocal


def reference_rerank(qf, gf, k1, k2, lambda_value):
    """Zhong et al.'s algorithm as published, dense N x N, stable sorts.

    Returns (final distances [Q, G], number of expansions taken) so tests can check the data
    actually exercises the expansion step.
    """
    x = np.concatenate([qf, gf]).astype(np.float64)
    num_q, n = len(qf), len(x)
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # squared Euclidean
    original = np.transpose(dist / np.max(dist, axis=0))
    initial_rank = np.argsort(original, axis=1, kind="stable")
    half = int(np.around(k1 / 2.0))
    v = np.zeros((n, n))
    expansions = 0
    for i in range(n):
        forward = initial_rank[i, : k1 + 1]
        backward = initial_rank[forward, : k1 + 1]
        reciprocal = forward[np.where(backward == i)[0]]
        expanded = reciprocal
        for cand in reciprocal:
            c_forward = initial_rank[cand, : half + 1]
            c_backward = initial_rank[c_forward, : half + 1]
            c_reciprocal = c_forward[np.where(c_backward == cand)[0]]
            if len(np.intersect1d(c_reciprocal, reciprocal)) > 2.0 / 3 * len(c_reciprocal):
                expanded = np.append(expanded, c_reciprocal)
                expansions += int(len(np.setdiff1d(c_reciprocal, reciprocal)) > 0)
        expanded = np.unique(expanded)
        weight = np.exp(-original[i, expanded])
        v[i, expanded] = weight / np.sum(weight)
    if k2 != 1:
        v = np.stack([np.mean(v[initial_rank[i, :k2]], axis=0) for i in range(n)])
    jaccard = np.stack([1 - np.minimum(v[i], v).sum(1) / np.maximum(v[i], v).sum(1) for i in range(num_q)])
    final = jaccard * (1 - lambda_value) + original[:num_q] * lambda_value
    return final[:, num_q:], expansions


def clustered(rng, num, dim, centres, spread=0.8):
    """Descriptors around identity centres: (unit float64 [num, dim], identity [num])."""
    ids = rng.integers(0, len(centres), num)
    x = centres[ids] + spread * rng.normal(size=(num, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True), ids


@pytest.mark.parametrize(
    ("num_q", "num_g", "k1", "k2", "lam"),
    [
        (20, 100, 20, 6, 0.3),
        (15, 80, 7, 1, 0.5),
        (10, 60, 5, 3, 0.0),
        (30, 150, 11, 4, 1.0),
        (3, 10, 20, 6, 0.3),
    ],
)
def test_k_reciprocal_matches_reference(num_q, num_g, k1, k2, lam):
    rng = np.random.default_rng(num_q * 7 + k1)
    centres = rng.normal(size=(12, 16))
    qf, _ = clustered(rng, num_q, 16, centres)
    gf, _ = clustered(rng, num_g, 16, centres)
    # Not unit: the original distance is plain squared Euclidean, whatever the norms.
    qf *= rng.uniform(0.5, 2.0, (num_q, 1))
    expected, expansions = reference_rerank(qf, gf, k1, k2, lam)
    if num_g >= 60 and k1 >= 7:
        assert expansions > 0
    got = k_reciprocal(qf, gf, k1, k2, lam)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64 and got.shape == (num_q, num_g)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    got32 = k_reciprocal(qf.astype(np.float32), gf.astype(np.float32), k1, k2, lam)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, expected, rtol=0, atol=2e-5)
    got_t = k_reciprocal(torch.from_numpy(qf), torch.from_numpy(gf), k1, k2, lam)
    assert isinstance(got_t, torch.Tensor) and got_t.device == torch.device("cpu")
    np.testing.assert_allclose(got_t.numpy(), expected, rtol=0, atol=1e-10)


def test_k_reciprocal_blocked_paths_match_reference(monkeypatch):
    # Small blocks and chunks force every multi-block / multi-chunk path on a small problem.
    monkeypatch.setattr(rerank, "_BLOCK", 37)
    monkeypatch.setattr(rerank, "_ROW_CHUNK", 50)
    monkeypatch.setattr(rerank, "_GATHER_CHUNK", 64)
    monkeypatch.setattr(rerank, "_PAIR_CHUNK", 500)
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(10, 12))
    qf, _ = clustered(rng, 25, 12, centres)
    gf, _ = clustered(rng, 140, 12, centres)
    expected, _ = reference_rerank(qf, gf, 20, 6, 0.3)
    np.testing.assert_allclose(k_reciprocal(qf, gf), expected, rtol=0, atol=1e-10)


def test_k_reciprocal_jaccard_sums_are_chunked_by_rows_and_match_reference(monkeypatch):
    # Pairs never fill a chunk here, so only the bound on the dense [rows, G] block splits the
    # queries: 3 rows of 140 gallery columns at a time (at G = 50k it keeps ~1 GB out of memory).
    monkeypatch.setattr(rerank, "_PAIR_CHUNK", 1 << 30)
    monkeypatch.setattr(rerank, "_SUM_CHUNK", 3 * 140)
    rng = np.random.default_rng(6)
    centres = rng.normal(size=(10, 12))
    qf, _ = clustered(rng, 25, 12, centres)
    gf, _ = clustered(rng, 140, 12, centres)
    sizes = []
    real = rerank._jaccard_min

    def spy(*args, **kwargs):
        for a, b, block in real(*args, **kwargs):
            sizes.append(b - a)
            yield a, b, block

    monkeypatch.setattr(rerank, "_jaccard_min", spy)
    expected, _ = reference_rerank(qf, gf, 20, 6, 0.3)
    np.testing.assert_allclose(k_reciprocal(qf, gf), expected, rtol=0, atol=1e-10)
    assert max(sizes) == 3 and sum(sizes) == 25


def test_k_reciprocal_degenerate_inputs():
    same = np.ones((4, 8))
    out = k_reciprocal(same[:1], same)
    assert out.shape == (1, 4) and np.isfinite(out).all()
    assert k_reciprocal(np.zeros((0, 8)), same).shape == (0, 4)
    with pytest.raises(ValueError, match="equal d"):
        k_reciprocal(np.zeros((2, 8)), np.zeros((3, 7)))
    with pytest.raises(ValueError, match="numpy arrays or both torch tensors"):
        k_reciprocal(np.zeros((2, 8)), torch.zeros(3, 8))
    with pytest.raises(ValueError, match="finite"):
        k_reciprocal(np.full((2, 8), np.nan), np.zeros((3, 8)))
    with pytest.raises(ValueError, match="k1"):
        k_reciprocal(np.zeros((2, 8)), np.zeros((3, 8)), k1=0)
    with pytest.raises(ValueError, match="lambda_value"):
        k_reciprocal(np.zeros((2, 8)), np.zeros((3, 8)), lambda_value=1.5)


# ---- GalleryNeighborGraph ----------------------------------------------------------------------


def assert_lists_are_exact(graph: GalleryNeighborGraph, ids: np.ndarray, feats: np.ndarray):
    """Every stored list equals the brute-force k nearest (ids and distances)."""
    assert len(graph) == len(ids)
    nbr, nbr_d = graph.neighbors(ids)
    f = feats.astype(np.float64)
    d = 2.0 - 2.0 * f @ f.T
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, : graph.k]
    have = min(graph.k, len(ids) - 1)
    np.testing.assert_array_equal(nbr[:, :have], ids[order[:, :have]])
    np.testing.assert_allclose(nbr_d[:, :have], np.take_along_axis(d, order, 1)[:, :have], atol=2e-6)
    assert (nbr[:, have:] == -1).all() and np.isinf(nbr_d[:, have:]).all()


def assert_storage_exact(graph: GalleryNeighborGraph):
    """White-box invariant: every stored list (k + slack long) is exactly the nearest items it
    holds, at least k of them unless it holds every other item."""
    n = len(graph)
    feats = graph._feats[:n].astype(np.float64)
    d = 2.0 - 2.0 * feats @ feats.T
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    for r in range(n):
        valid = graph._nbr[r] >= 0
        count = int(valid.sum())
        assert valid[:count].all(), f"row {r}: entries not a prefix"
        assert count >= min(graph.k, n - 1), f"row {r}: only {count} entries"
        assert graph._complete[r] == (count == n - 1)
        np.testing.assert_array_equal(
            np.sort(graph._nbr[r, :count]), np.sort(order[r, :count]), err_msg=f"row {r}"
        )


@pytest.fixture
def rr_small_blocks(monkeypatch):
    monkeypatch.setattr(neighbor_graph, "_GRAPH_ROWS", 16)
    monkeypatch.setattr(neighbor_graph, "_GRAPH_COLS", 24)


def test_graph_add_and_remove_keep_exact_lists(rr_small_blocks):
    rng = np.random.default_rng(0)
    feats, _ = clustered(rng, 180, 24, rng.normal(size=(15, 24)))
    feats = feats.astype(np.float32)
    ids = rng.permutation(10**6)[:180].astype(np.int64)
    graph = GalleryNeighborGraph(24, k=12)
    graph.add(ids[:5], feats[:5])  # fewer items than k: padded lists
    assert_lists_are_exact(graph, ids[:5], feats[:5])
    graph.add(ids[5:6], feats[5:6])
    graph.add(ids[6:100], feats[6:100])
    graph.add(ids[100:], feats[100:])
    assert_lists_are_exact(graph, ids, feats)
    assert ids[3] in graph and 10**7 not in graph and "x" not in graph

    # Remove neighbours of a fixed item, the last stored rows and a random scatter.
    nbr, _ = graph.neighbors(ids[:1])
    gone = np.unique(np.concatenate([nbr[0, :4], ids[-3:], rng.choice(ids[1:], 30, replace=False)]))
    gone = gone[gone != ids[0]]
    graph.remove(gone)
    alive = ~np.isin(ids, gone)
    assert_lists_are_exact(graph, ids[alive], feats[alive])
    assert_storage_exact(graph)
    assert gone[0] not in graph

    # Lists that lost entries take back only what is provably among their nearest.
    back = gone[:10]
    graph.add(back, feats[[int(np.flatnonzero(ids == b)[0]) for b in back]])
    alive |= np.isin(ids, back)
    assert_lists_are_exact(graph, ids[alive], feats[alive])
    assert_storage_exact(graph)
    assert sorted(graph.ids().tolist()) == sorted(ids[alive].tolist())

    more = rng.choice(ids[alive], 40, replace=False)
    graph.remove(more)
    alive &= ~np.isin(ids, more)
    assert_lists_are_exact(graph, ids[alive], feats[alive])
    assert_storage_exact(graph)

    # Shrink below k + 1 items: every list then holds all the others.
    graph.remove(ids[alive][5:])
    assert_storage_exact(graph)
    assert graph._complete[: len(graph)].all()
    graph.remove(ids[alive][:5])
    assert len(graph) == 0


def test_graph_rejects_bad_input():
    rng = np.random.default_rng(1)
    feats, _ = clustered(rng, 10, 8, rng.normal(size=(3, 8)))
    feats = feats.astype(np.float32)
    graph = GalleryNeighborGraph(8, k=4)
    graph.add(np.arange(10), feats)
    with pytest.raises(KeyError, match="12345"):
        graph.remove(np.array([1, 12345]))
    assert len(graph) == 10 and 1 in graph  # nothing removed
    with pytest.raises(ValueError, match="already"):
        graph.add(np.array([3]), feats[:1])
    with pytest.raises(ValueError, match="duplicates"):
        graph.add(np.array([20, 20]), feats[:2])
    with pytest.raises(ValueError, match="L2-normalised"):
        graph.add(np.array([21]), 2 * feats[:1])
    with pytest.raises(ValueError, match=r"shape \[n, 8\]"):
        graph.add(np.array([21]), feats[:1, :7])
    with pytest.raises(ValueError, match="exceeds"):
        graph.rerank(feats[0], np.arange(5), k1=5)
    with pytest.raises(KeyError):
        graph.rerank(feats[0], np.array([0, 99]), k1=4, k2=3)
    with pytest.raises(ValueError, match="k2=6 exceeds"):
        graph.rerank(feats[0], np.arange(5), k1=4, k2=6)
    assert graph.rerank(feats[0], np.array([], dtype=np.int64), k1=4, k2=3).shape == (0,)


def test_graph_rerank_with_whole_gallery_equals_exact(rr_small_blocks):
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(12, 32))
    gf, _ = clustered(rng, 150, 32, centres)
    gf = gf.astype(np.float32)
    ids = np.arange(1000, 1150)
    graph = GalleryNeighborGraph(32, k=20)
    graph.add(ids[:70], gf[:70])
    graph.add(ids[70:], gf[70:])
    for t in range(4):
        q, _ = clustered(rng, 1, 32, centres)
        q = q.astype(np.float32)
        perm = rng.permutation(150)
        for k1, k2, lam in ((20, 6, 0.3), (9, 1, 0.6), (4, 3, 0.0)):
            exact = k_reciprocal(q, gf, k1, k2, lam)[0]
            got = graph.rerank(q[0], ids[perm], k1, k2, lam)
            assert got.dtype == np.float32 and got.shape == (150,)
            np.testing.assert_allclose(got, exact[perm], rtol=0, atol=2e-5, err_msg=f"query {t}")


def test_graph_rerank_small_candidate_sets_and_tiny_gallery():
    rng = np.random.default_rng(3)
    gf, _ = clustered(rng, 6, 8, rng.normal(size=(2, 8)))
    gf = gf.astype(np.float32)
    graph = GalleryNeighborGraph(8, k=10)  # k larger than the gallery
    graph.add(np.arange(6), gf)
    q = gf[0]
    np.testing.assert_allclose(
        graph.rerank(q, np.arange(6), k1=10, k2=6), k_reciprocal(q[None], gf, 10, 6)[0], atol=2e-5
    )
    one = graph.rerank(q, np.array([4]), k1=5)
    assert one.shape == (1,) and np.isfinite(one).all()
    three = graph.rerank(q, np.array([5, 0, 2]), k1=5)
    assert three.shape == (3,) and np.isfinite(three).all()
    assert three[1] == three.min()  # the query's own descriptor stays nearest


def test_graph_rerank_agrees_with_batch_reranking_on_identities():
    """Sanity bound: candidate-restricted re-ranking (one query at a time) against exact batch
    k_reciprocal over all queries, on identity-labelled data."""
    rng = np.random.default_rng(4)
    dim, n_ids = 32, 40
    centres = rng.normal(size=(n_ids, dim))
    gf, g_pid = clustered(rng, 400, dim, centres, spread=1.0)
    qf, q_pid = clustered(rng, 60, dim, centres, spread=1.0)
    gf, qf = gf.astype(np.float32), qf.astype(np.float32)
    g_cam, q_cam = rng.integers(0, 6, 400), rng.integers(0, 6, 60)
    graph = GalleryNeighborGraph(dim, k=20)
    graph.add(np.arange(400), gf)
    exact = k_reciprocal(qf, gf)
    exact_map = evaluate_rank(exact, q_pid, g_pid, q_cam, g_cam).mAP
    plain_map = evaluate_rank(2 - 2 * qf @ gf.T, q_pid, g_pid, q_cam, g_cam).mAP
    for num_c in (400, 100):
        dist = np.empty((60, 400), dtype=np.float32)
        overlap = []
        for i in range(60):
            cand = np.argsort(2 - 2 * gf @ qf[i], kind="stable")[:num_c]
            dist[i] = 10.0 + (2 - 2 * gf @ qf[i])  # outside the candidates: after them, original order
            dist[i, cand] = graph.rerank(qf[i], cand)
            overlap.append(len(set(np.argsort(dist[i])[:10]) & set(np.argsort(exact[i])[:10])) / 10)
        got_map = evaluate_rank(dist, q_pid, g_pid, q_cam, g_cam).mAP
        assert abs(got_map - exact_map) < 0.03, (num_c, got_map, exact_map, plain_map)
        assert np.mean(overlap) > 0.85, (num_c, np.mean(overlap))


@pytest.mark.parametrize("seed", range(6))
def test_graph_after_enrolls_and_deletes_equals_graph_rebuilt_on_the_same_items(seed):
    """The service's graph is updated item by item on enroll and delete, and rebuilt from the store at
    start (in int id order): both must give the same re-ranked distances, bit for bit, at the
    validated k1 = 3, k2 = 1 (a restart must not change answers)."""
    def unit(x):
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    rng = np.random.default_rng(seed)
    dim = 32
    n = int(rng.integers(5, 40))
    feats = unit(rng.normal(size=(n, dim)) + 1.5 * rng.normal(size=(1, dim)))
    ids = np.arange(n, dtype=np.int64) * 3 + 1
    incremental = GalleryNeighborGraph(dim, k=30)
    for i in range(n):  # one enroll at a time
        incremental.add(ids[i : i + 1], feats[i : i + 1])
    gone = rng.choice(n, size=max(1, n // 3), replace=False)
    for i in gone.tolist():  # one delete at a time
        incremental.remove(ids[i : i + 1])
    kept = np.setdiff1d(np.arange(n), gone)
    rebuilt = GalleryNeighborGraph(dim, k=30)
    rebuilt.add(ids[kept], feats[kept])  # as at start: every stored item at once, by int id

    for probe in range(4):
        # Queries: an enrolled tracklet again (distance 0 to it, as in the service test) and new ones.
        q = feats[kept[probe]] if probe < 2 else unit(feats[kept[probe]] + 0.3 * rng.normal(size=dim))
        for cand in (ids[kept], ids[kept[: max(2, len(kept) // 2)]]):
            got = incremental.rerank(q, cand, k1=3, k2=1, lambda_value=0.3)
            want = rebuilt.rerank(q, cand, k1=3, k2=1, lambda_value=0.3)
            np.testing.assert_array_equal(got, want)
