"""Re-identification ranking metrics (mAP, CMC, mINP) under the market-1501 protocol.

Protocol (SPEC section 3): for each query, gallery items with the same identity *and* the same
camera are junk and removed; the remaining same-identity items are the positives; every other
item (including distractors such as pid -1) is a negative. Items are ordered by distance,
ascending, ties broken by gallery index (a stable sort), so results are deterministic. Queries
with no positive are skipped and counted. ``evaluate_rank`` also takes an optional per-pair junk
mask, so other protocols (e.g. the cross-session one of ``session_junk_mask``) reuse it.

``evaluate_ranking_vreid_xfd`` is a second, separate protocol: the VReID-XFD organisers' scorer
(``calculate_metrics_from_csv.py`` of the challenge baseline), which reads identities from tracklet
names, drops only the query's own tracklet and averages precision trapezoidally.

The evaluator never sorts a row. A positive's 0-based rank among the kept items is
    rank(p) = #{positives before p} + #{negatives j : (d_j, j) < (d_p, p)}
and AP, CMC and INP need nothing else. Per chunk of queries it compares the rows against each
positive's distance (a < and a <= pass per positive, bits counted 64 at a time; where the two
counts differ, an exact tie is resolved by index), so the cost is O(Q * G * P) with P the
largest positive count in the chunk; queries are grouped by P and chunks run on threads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

# Rows of the distance matrix processed per chunk are chosen so a chunk holds about this many
# entries: small enough to stay in cache for the repeated comparison passes.
_CHUNK_ELEMS = 1 << 20
_MAX_THREADS = 8


@dataclass(frozen=True, eq=False)
class RankResult:
    """Metrics of one query set ranked against one gallery.

    mAP, mINP: means over the valid queries (NaN when there is none).
    cmc: [max_rank] float, cmc[r] = fraction of valid queries with a positive within the top r+1.
    num_valid_queries: queries with at least one positive (the others are skipped).
    ap: [Q] per-query average precision, NaN for skipped queries (for pooling over cases).
    """

    mAP: float
    cmc: np.ndarray
    mINP: float
    num_valid_queries: int
    ap: np.ndarray

    @property
    def num_skipped_queries(self) -> int:
        return int(np.isnan(self.ap).sum())


def mean_ap_pooled(results: Sequence[RankResult]) -> float:
    """Query-weighted mAP over several cases: sum of all valid queries' AP / number of them."""
    total = sum(r.num_valid_queries for r in results)
    if total == 0:
        return float("nan")
    return float(sum(np.nansum(r.ap) for r in results) / total)


def _to_numpy(x: np.ndarray | torch.Tensor | Sequence) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _label_codes(q: np.ndarray, g: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Map query and gallery labels (any comparable dtype) to shared int64 codes."""
    if q.ndim != 1 or g.ndim != 1:
        raise ValueError(f"q_{name} and g_{name} must be 1-D, got shapes {q.shape} and {g.shape}")
    both = np.concatenate([q, g])
    if both.dtype.kind in "iub":
        codes = both.astype(np.int64, copy=False)
    else:
        codes = np.unique(both, return_inverse=True)[1].astype(np.int64)
    return codes[: len(q)], codes[len(q) :]


def _ragged(starts: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ranges [starts[i], starts[i] + lens[i]) -> (owner i of each element, value)."""
    owner = np.repeat(np.arange(len(lens)), lens)
    offsets = np.cumsum(lens) - lens
    return owner, np.arange(len(owner)) - offsets[owner] + starts[owner]


def _count_true(mask: np.ndarray) -> np.ndarray:
    """Per-row number of True in a C-contiguous bool [B, W] array with W % 8 == 0."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0: bools are 0/1 bytes, so popcount of 8 bytes
        return np.bitwise_count(mask.view(np.uint64)).sum(axis=1, dtype=np.int64)
    return np.count_nonzero(mask, axis=1)


@dataclass(frozen=True)
class _Layout:
    """Per-query index arrays shared by the chunk workers of ``evaluate_rank``."""

    dist: np.ndarray  # [Q, G]
    pair_start: np.ndarray  # [Q] offset of the query's same-identity items in pair_g
    n_same: np.ndarray  # [Q]
    pair_g: np.ndarray  # [S] gallery index of each same-identity (query, item) pair
    pos_start: np.ndarray  # [Q] offset of the query's positives in pos_*
    n_pos: np.ndarray  # [Q]
    pos_k: np.ndarray  # [P] index of the positive among its query's positives (rank order)
    pos_g: np.ndarray  # [P] gallery index of the positive
    pos_d: np.ndarray  # [P] its distance
    junk_start: np.ndarray  # [Q] offset of the query's extra junk items in junk_g
    n_junk: np.ndarray  # [Q]
    junk_g: np.ndarray  # [J] gallery index of each extra junk (query, item) pair

    def negatives_before(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For queries ``rows``: (indices into pos_*, number of negatives ranked before each positive)."""
        num_g = self.dist.shape[1]
        b = len(rows)
        chunk = np.take(self.dist, rows, axis=0)
        # Same-identity items (positives and junk) are never negatives: NaN fails every comparison.
        local, pp = _ragged(self.pair_start[rows], self.n_same[rows])
        chunk[local, self.pair_g[pp]] = np.nan
        if len(self.junk_g):  # extra junk may hold other identities: they are not negatives either
            j_local, jj = _ragged(self.junk_start[rows], self.n_junk[rows])
            chunk[j_local, self.junk_g[jj]] = np.nan
        p_max = int(self.n_pos[rows].max())
        p_local, p_idx = _ragged(self.pos_start[rows], self.n_pos[rows])
        slot = self.pos_k[p_idx]
        thresh = np.full((b, p_max), np.nan, dtype=chunk.dtype)
        thresh[p_local, slot] = self.pos_d[p_idx]
        lt = np.zeros((b, p_max), dtype=np.int64)
        le = np.zeros((b, p_max), dtype=np.int64)
        # Padding columns stay False, so popcounts over the padded width are exact.
        hits = np.zeros((b, -(-num_g // 8) * 8), dtype=bool)
        for k in range(p_max):
            np.less(chunk, thresh[:, k : k + 1], out=hits[:, :num_g])
            lt[:, k] = _count_true(hits)
            np.less_equal(chunk, thresh[:, k : k + 1], out=hits[:, :num_g])
            le[:, k] = _count_true(hits)
        counts = lt[p_local, slot]
        # A negative at exactly a positive's distance precedes it only if its index is smaller.
        for t in np.flatnonzero(le[p_local, slot] > counts):
            g = self.pos_g[p_idx[t]]
            counts[t] += np.count_nonzero(chunk[p_local[t], :g] == self.pos_d[p_idx[t]])
        return p_idx, counts


def evaluate_rank(
    distmat: np.ndarray | torch.Tensor,
    q_pids: np.ndarray | torch.Tensor | Sequence,
    g_pids: np.ndarray | torch.Tensor | Sequence,
    q_camids: np.ndarray | torch.Tensor | Sequence,
    g_camids: np.ndarray | torch.Tensor | Sequence,
    max_rank: int = 50,
    junk: np.ndarray | torch.Tensor | None = None,
) -> RankResult:
    """mAP, CMC[:max_rank] and mINP of distmat [Q, G] (lower = closer) under the market-1501 protocol.

    ``junk``: optional bool [Q, G]; a True pair is removed from that query's ranking, in addition
    to the same-identity same-camera items (neither a positive nor a negative).

    For a valid query with positives p_1..p_n in rank order (0-based ranks r_k among kept items):
        AP  = (1/n) * sum_k k / (r_k + 1)       (k = 1..n, non-interpolated precision at each hit)
        INP = n / (r_n + 1)
        CMC[r] = 1 if r_1 <= r else 0           (a query with fewer than max_rank kept items
                                                 saturates at 1, i.e. is padded with its last value)
    Labels may be any int or string arrays; distmat may be numpy or torch (any device).
    """
    if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1:
        raise ValueError(f"max_rank must be an int >= 1, got {max_rank!r}")
    dist = _to_numpy(distmat)
    if dist.ndim != 2:
        raise ValueError(f"distmat must be 2-D [num_query, num_gallery], got shape {dist.shape}")
    if dist.dtype.kind != "f":
        dist = dist.astype(np.float64)
    elif dist.dtype == np.float16:
        dist = dist.astype(np.float32)
    q_pid, g_pid = _label_codes(_to_numpy(q_pids), _to_numpy(g_pids), "pids")
    q_cam, g_cam = _label_codes(_to_numpy(q_camids), _to_numpy(g_camids), "camids")
    num_q, num_g = dist.shape
    for name, arr, want in (
        ("q_pids", q_pid, num_q),
        ("q_camids", q_cam, num_q),
        ("g_pids", g_pid, num_g),
        ("g_camids", g_cam, num_g),
    ):
        if len(arr) != want:
            raise ValueError(f"{name} has length {len(arr)} but distmat has shape {dist.shape}")
    if np.isnan(dist).any():
        raise ValueError("distmat contains NaN; distances must be comparable")

    # Same-identity gallery items of each query, ascending gallery index within a query.
    order = np.argsort(g_pid, kind="stable")
    sorted_pid = g_pid[order]
    first = np.searchsorted(sorted_pid, q_pid, side="left")
    n_same = np.searchsorted(sorted_pid, q_pid, side="right") - first
    pair_q, pair_pos = _ragged(first, n_same)
    pair_g = order[pair_pos]
    pair_start = np.cumsum(n_same) - n_same
    is_pos = g_cam[pair_g] != q_cam[pair_q]
    junk_g = np.zeros(0, dtype=np.int64)
    n_junk = np.zeros(num_q, dtype=np.int64)
    if junk is not None:
        extra = _to_numpy(junk)
        if extra.shape != dist.shape or extra.dtype != np.bool_:
            raise ValueError(f"junk must be a bool array of shape {dist.shape}, got {extra.dtype} {extra.shape}")
        is_pos &= ~extra[pair_q, pair_g]
        junk_q, junk_g = np.nonzero(extra)  # row-major, so grouped by query
        n_junk = np.bincount(junk_q, minlength=num_q)
    junk_start = np.cumsum(n_junk) - n_junk
    n_pos = np.bincount(pair_q[is_pos], minlength=num_q)

    # Positives of all queries sorted by (query, distance, gallery index): this is rank order.
    pos_q, pos_g = pair_q[is_pos], pair_g[is_pos]
    pos_d = dist[pos_q, pos_g]
    o = np.lexsort((pos_g, pos_d, pos_q))
    pos_q, pos_g, pos_d = pos_q[o], pos_g[o], pos_d[o]
    pos_start = np.cumsum(n_pos) - n_pos
    pos_k = np.arange(len(pos_q)) - pos_start[pos_q]  # index among the query's positives
    neg_before = np.zeros(len(pos_q), dtype=np.int64)

    valid_q = np.flatnonzero(n_pos > 0)
    valid_q = valid_q[np.argsort(n_pos[valid_q], kind="stable")]  # similar positive counts per chunk
    rows_per_chunk = max(1, min(len(valid_q), _CHUNK_ELEMS // max(num_g, 1)))
    layout = _Layout(dist, pair_start, n_same, pair_g, pos_start, n_pos, pos_k, pos_g, pos_d,
                     junk_start, n_junk, junk_g)
    chunks = [valid_q[c : c + rows_per_chunk] for c in range(0, len(valid_q), rows_per_chunk)]
    # numpy releases the GIL in the comparison and popcount loops, so chunks run in parallel.
    workers = min(len(chunks), os.cpu_count() or 1, _MAX_THREADS)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(layout.negatives_before, chunks))
    else:
        parts = [layout.negatives_before(rows) for rows in chunks]
    for p_idx, counts in parts:
        neg_before[p_idx] = counts

    rank = pos_k + neg_before  # 0-based rank among kept gallery items
    ap = np.full(num_q, np.nan)
    inp = np.full(num_q, np.nan)
    num_valid = len(valid_q)
    cmc = np.full(max_rank, np.nan)
    if num_valid:
        vq = np.flatnonzero(n_pos > 0)
        prec = (pos_k + 1) / (rank + 1)
        ap[vq] = np.bincount(pos_q, weights=prec, minlength=num_q)[vq] / n_pos[vq]
        last = pos_start[vq] + n_pos[vq] - 1
        inp[vq] = n_pos[vq] / (rank[last] + 1)
        first_hit = rank[pos_start[vq]]
        hist = np.bincount(np.minimum(first_hit, max_rank), minlength=max_rank + 1)[:max_rank]
        cmc = np.cumsum(hist) / num_valid
    return RankResult(
        mAP=float(np.nanmean(ap)) if num_valid else float("nan"),
        cmc=cmc.astype(np.float64),
        mINP=float(np.nanmean(inp)) if num_valid else float("nan"),
        num_valid_queries=num_valid,
        ap=ap,
    )


SESSION_KEEPS: tuple[str, ...] = ("other-session", "same-session")


def session_junk_mask(
    q_pids: np.ndarray | Sequence,
    g_pids: np.ndarray | Sequence,
    q_sessions: np.ndarray | Sequence,
    g_sessions: np.ndarray | Sequence,
    keep: str,
) -> np.ndarray:
    """The junk mask [Q, G] (for ``evaluate_rank(junk=...)``) that keeps one kind of positive.

    With same(i, j) = [pid_i == pid_j] and sess(i, j) = [session_i == session_j]:
        keep = "other-session" (clothing-changed):  junk(i, j) = same(i, j) and sess(i, j)
        keep = "same-session"  (same-outfit):       junk(i, j) = same(i, j) and not sess(i, j)
    Only same-identity pairs are ever junk, so negatives are untouched. Labels may be any int or
    string arrays; every session must be known (no None).
    """
    if keep not in SESSION_KEEPS:
        raise ValueError(f"keep must be one of {SESSION_KEEPS}, got {keep!r}")
    q_s, g_s = np.asarray(q_sessions, dtype=object), np.asarray(g_sessions, dtype=object)
    if any(s is None for s in (*q_s.tolist(), *g_s.tolist())):
        raise ValueError("session_junk_mask needs every session; found None")
    q_pid, g_pid = _label_codes(_to_numpy(q_pids), _to_numpy(g_pids), "pids")
    q_ses, g_ses = _label_codes(q_s.astype(str), g_s.astype(str), "sessions")
    if len(q_pid) != len(q_ses) or len(g_pid) != len(g_ses):
        raise ValueError(f"pids and sessions differ in length: query {len(q_pid)} vs {len(q_ses)}, "
                         f"gallery {len(g_pid)} vs {len(g_ses)}")
    same_id = q_pid[:, None] == g_pid[None, :]
    same_session = q_ses[:, None] == g_ses[None, :]
    return same_id & (same_session if keep == "other-session" else ~same_session)


def tracklet_identity(name: str) -> str:
    """Identity of a VReID-XFD tracklet name ``<pid>_<tracklet>``: the text before the first ``_``.

    ``"0024_5453" -> "0024"``; a name without a non-empty identity and tracklet part raises
    ValueError naming it (the organisers' scorer would crash on it).
    """
    pid, sep, rest = str(name).partition("_")
    if not sep or not pid or not rest:
        raise ValueError(f"tracklet name {name!r} does not parse as <pid>_<tracklet> (needed by the VReID-XFD "
                         f"scorer to read its identity)")
    return pid


def trapezoid_ap(hit_ranks: np.ndarray | Sequence[int]) -> float:
    """Market-1501's python ``compute_mAP`` AP from the 0-based kept ranks r_0 < ... < r_{n-1} of the
    positives (trapezoidal rule over the precision-recall steps):

        precision_i     = (i + 1) / (r_i + 1)
        old_precision_i = i / r_i   if r_i != 0 else 1
        AP = sum_i (1 / n) * (old_precision_i + precision_i) / 2          (0 when n = 0)

    One positive at 1-based rank r gives AP = 1 if r = 1 else 1 / (2 r).
    """
    r = np.asarray(hit_ranks, dtype=np.float64)
    if r.size == 0:
        return 0.0
    i = np.arange(r.size, dtype=np.float64)
    precision = (i + 1) / (r + 1)
    old = np.divide(i, r, out=np.ones_like(r), where=r != 0)
    return float(np.mean((old + precision) / 2))


def evaluate_ranking_vreid_xfd(
    ranking: np.ndarray,
    query_names: Sequence[str],
    gallery_names: Sequence[str],
    max_rank: int = 50,
) -> RankResult:
    """The VReID-XFD organisers' scorer on rankings ``[Q, G]`` (gallery indices, best first).

    Identity of every tracklet = ``tracklet_identity(name)``. For query i: junk = the gallery items
    named exactly like the query (its own tracklet; same-camera positives are NOT junk), positives
    = the other items of its identity. With r_0 < ... < r_{n-1} the positives' 0-based ranks once
    junk is removed:
        AP  = trapezoid_ap(r)                  (see there; not evaluate_rank's AP)
        CMC[k] = 1 if r_0 <= k else 0          (saturates like evaluate_rank's)
        INP = n / (r_{n-1} + 1)
    Queries without a positive are skipped (AP NaN), as in the scorer.
    """
    if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1:
        raise ValueError(f"max_rank must be an int >= 1, got {max_rank!r}")
    rank_idx = np.asarray(ranking)
    num_q = len(query_names)
    if rank_idx.ndim != 2 or rank_idx.shape[0] != num_q or rank_idx.dtype.kind not in "iu":
        raise ValueError(f"ranking must be an int array [{num_q}, G], got {rank_idx.dtype} {rank_idx.shape}")
    q_names, g_names = np.asarray(query_names, dtype=str), np.asarray(gallery_names, dtype=str)
    if rank_idx.size and (rank_idx.min() < 0 or rank_idx.max() >= len(g_names)):
        raise ValueError(f"ranking holds gallery indices outside 0..{len(g_names) - 1}")
    q_id, g_id = _label_codes(np.array([tracklet_identity(n) for n in q_names]),
                              np.array([tracklet_identity(n) for n in g_names]), "identities")
    q_nm, g_nm = _label_codes(q_names, g_names, "names")
    ap = np.full(num_q, np.nan)
    inp = np.full(num_q, np.nan)
    first_hit = np.full(num_q, -1, dtype=np.int64)
    rows_per_chunk = max(1, _CHUNK_ELEMS // max(rank_idx.shape[1], 1))
    for c in range(0, num_q, rows_per_chunk):
        rows = np.arange(c, min(c + rows_per_chunk, num_q))
        block = rank_idx[rows]
        junk = g_nm[block] == q_nm[rows, None]
        good = (g_id[block] == q_id[rows, None]) & ~junk
        kept_rank = np.cumsum(~junk, axis=1) - 1
        hit_row, hit_col = np.nonzero(good)  # row-major: each query's positives in rank order
        r = kept_rank[hit_row, hit_col].astype(np.float64)
        n = np.bincount(hit_row, minlength=len(rows))
        start = np.cumsum(n) - n
        i = np.arange(len(hit_row)) - start[hit_row]
        # trapezoid_ap, vectorised over the chunk's positives.
        term = ((np.divide(i, r, out=np.ones_like(r), where=r != 0)) + (i + 1) / (r + 1)) / 2
        valid = n > 0
        ap[rows[valid]] = np.bincount(hit_row, weights=term, minlength=len(rows))[valid] / n[valid]
        inp[rows[valid]] = n[valid] / (r[start[valid] + n[valid] - 1] + 1)
        first_hit[rows[valid]] = r[start[valid]].astype(np.int64)
    vq = np.flatnonzero(first_hit >= 0)
    cmc = np.full(max_rank, np.nan)
    if len(vq):
        hist = np.bincount(np.minimum(first_hit[vq], max_rank), minlength=max_rank + 1)[:max_rank]
        cmc = np.cumsum(hist) / len(vq)
    return RankResult(
        mAP=float(np.nanmean(ap)) if len(vq) else float("nan"),
        cmc=cmc.astype(np.float64),
        mINP=float(np.nanmean(inp)) if len(vq) else float("nan"),
        num_valid_queries=len(vq),
        ap=ap,
    )
