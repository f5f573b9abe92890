"""k-reciprocal re-ranking (Zhong et al., CVPR 2017): exact over a query set, and restricted to a
query's candidates for serving.

Definitions (SPEC section 4; the standard implementation, reproduced step by step):
    d(i, j)   squared Euclidean distance between descriptors (NOT the Euclidean distance),
              over all N = Q + G items; each row i is divided by m_i = max_j d(i, j) (the standard
              divides each column by its max and transposes; d is symmetric, so this is the same).
    N(i, k)   the k + 1 nearest items of i by d (i itself included, ties by index).
    R(i, k)   {j in N(i, k) : i in N(j, k)}, the k-reciprocal neighbours.
    R*(i)     R(i, k1) united with R(j, round(k1 / 2)) of every j in R(i, k1) for which
              |R(j, round(k1/2)) ∩ R(i, k1)| > 2/3 |R(j, round(k1/2))|.
    V(i, j)   exp(-d(i, j) / m_i) / sum_{l in R*(i)} exp(-d(i, l) / m_i) for j in R*(i), else 0.
    V'(i)     mean of V(j) over the k2 nearest j of i (i included); V' = V when k2 = 1.
    J(q, g)   1 - sum_l min(V'(q, l), V'(g, l)) / sum_l max(V'(q, l), V'(g, l)).
    final     (1 - lambda) * J(q, g) + lambda * d(q, g) / m_q.

The standard implementation stores several dense N x N arrays and argsorts them all. Here the
N x N distances are only ever seen one block at a time (symmetric blocks, so half the product),
keeping per row the nearest neighbours and the row max; V is sparse (about 1.5 * k1 entries a
row), and the Jaccard sum of minima runs over the pairs of rows sharing a column only. The same
sparse steps, fed with neighbour lists from ``index.neighbor_graph.GalleryNeighborGraph``, give the
candidate-restricted variant used by the service.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class RerankParams:
    """k-reciprocal re-ranking parameters: the one place their values are set (``sasreid
    evaluate``, the evaluator and the service's settings use the defaults).

    The defaults are chosen by validation on real images (bench/RESULTS.md, "Accuracy on real
    images (PETA-dev)", re-ranking grid): galleries there hold one or two tracklets per identity,
    and a larger k1 pulls other identities into every k-reciprocal set (mAP-3 14.04 at k1 = 3,
    k2 = 1 against 11.25 at Zhong et al.'s 20 / 6; plain ranking 14.26, so re-ranking stays off
    unless asked for). ``RerankParams.paper()`` gives Zhong et al.'s k1 = 20, k2 = 6, lambda = 0.3.
    In the service ``k1`` <= the graph's k.
    """

    k1: int = 3
    k2: int = 1
    lambda_value: float = 0.3

    def __post_init__(self) -> None:
        for name in ("k1", "k2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RerankParams.{name} must be an int >= 1, got {value!r}")
        if not (0.0 <= self.lambda_value <= 1.0):
            raise ValueError(f"RerankParams.lambda_value must be in [0, 1], got {self.lambda_value!r}")

    @classmethod
    def paper(cls) -> RerankParams:
        """Zhong et al. (CVPR 2017): k1 = 20, k2 = 6, lambda = 0.3."""
        return cls(k1=20, k2=6, lambda_value=0.3)

    def to_dict(self) -> dict[str, float]:
        return {"k1": self.k1, "k2": self.k2, "lambda": self.lambda_value}


def _spend_csr_beta_warning() -> None:
    """Query expansion is one sparse CSR product; torch warns once per process that CSR tensors
    are beta. Spend that one warning here, silenced, rather than in callers' logs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        empty = torch.zeros(0, dtype=torch.int64)
        torch.sparse_csr_tensor(
            torch.zeros(1, dtype=torch.int64), empty, empty.float(), size=(0, 0), check_invariants=False
        )


_spend_csr_beta_warning()

Tensor = torch.Tensor
PairDistance = Callable[[Tensor, Tensor], Tensor]

_BLOCK = 2048  # rows/columns of one block of the N x N distance matrix
_ROW_CHUNK = 4096  # rows whose k-reciprocal sets are built at once
_GATHER_CHUNK = 8192  # descriptor pairs gathered at once for direct distances
_PAIR_CHUNK = 1 << 20  # (query entry, gallery entry) pairs per Jaccard chunk (~50 MB of temporaries)
_SUM_CHUNK = 1 << 24  # values of one dense [rows, G] block of Jaccard sums (64 MiB in float32)


def _half(k1: int) -> int:
    """round(k1 / 2) with round-half-to-even, as ``np.around`` in the standard implementation."""
    return round(k1 / 2)


def _check_params(k1: int, k2: int, lambda_value: float) -> None:
    for name, v in (("k1", k1), ("k2", k2)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value!r}")


# ---- sparse building blocks (torch, any device) --------------------------------------------------


@dataclass(frozen=True)
class _Lists:
    """Sorted neighbour lists over M items, the basis of every k-reciprocal step.

    idx: [M + 1, W] int64, row i = the W nearest items of i (normally i itself first), ascending
         distance. Entry M means "absent"; row M is all-absent, so gathers through absent entries
         stay in bounds and never match a real item.
    dist: [M + 1, W] squared Euclidean distance of each entry (inf where absent).
    rowmax: [M] normaliser m_i of each row (> 0).
    """

    idx: Tensor
    dist: Tensor
    rowmax: Tensor

    @property
    def size(self) -> int:
        return self.idx.shape[0] - 1


@dataclass(frozen=True)
class _CSR:
    """Sparse rows: row r holds (cols[indptr[r]:indptr[r+1]], vals[...]), cols ascending."""

    indptr: Tensor  # [R + 1] int64
    cols: Tensor  # [nnz] int64
    vals: Tensor  # [nnz]

    @staticmethod
    def concat(parts: list[_CSR]) -> _CSR:
        offsets = torch.cumsum(torch.stack([p.indptr[-1] for p in parts]), 0)
        indptr = [parts[0].indptr] + [p.indptr[1:] + offsets[i] for i, p in enumerate(parts[1:])]
        return _CSR(torch.cat(indptr), torch.cat([p.cols for p in parts]), torch.cat([p.vals for p in parts]))


# Gathers use index_select: on CPU it is several times faster than advanced indexing (x[idx]).


def _take(x: Tensor, index: Tensor) -> Tensor:
    """x[index] along dim 0 for an index tensor of any shape: [*index.shape, *x.shape[1:]]."""
    return x.index_select(0, index.reshape(-1)).view(*index.shape, *x.shape[1:])


def _ragged(starts: Tensor, lens: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenated ranges [starts[i], starts[i] + lens[i]) -> (owner i of each element, value)."""
    total = int(lens.sum())
    owner = torch.repeat_interleave(torch.arange(len(lens), device=lens.device), lens, output_size=total)
    values = torch.arange(total, device=lens.device)
    values += torch.repeat_interleave(starts - (torch.cumsum(lens, 0) - lens), lens, output_size=total)
    return owner, values


def _reciprocal(idx: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """R(i, k) for i in rows as (N(i, k) [R, a] ids, mask [R, a] of the reciprocal ones), where idx
    holds the lists cut to their first a = k + 1 columns (fewer if the lists are shorter)."""
    fwd = _take(idx, rows)
    back = _take(idx, fwd)  # [R, a, a]
    return fwd, (back == rows[:, None, None]).any(-1)


def _expanded_members(lists: _Lists, rows: Tensor, k1: int) -> tuple[Tensor, Tensor, Tensor]:
    """R*(i) for i in rows -> (counts [R], cols [nnz] ascending per row, d(i, col) [nnz] or NaN).

    The distance is known (from the list) for members of R(i, k1); NaN marks expansion members
    whose distance to i is still to be computed.
    """
    m = lists.size
    dev = rows.device
    a = min(k1 + 1, lists.idx.shape[1])
    fwd, rmask = _reciprocal(lists.idx[:, :a].contiguous(), rows)  # [R, a]
    r_row = rmask.nonzero(as_tuple=True)[0]
    r_col = fwd[rmask]  # entries (i, j) with j in R(i, k1), row-major
    cand_rows = torch.unique(r_col)
    h = min(_half(k1) + 1, lists.idx.shape[1])
    hfwd, hmask = _reciprocal(lists.idx[:, :h].contiguous(), cand_rows)  # R(j, k1/2)
    h_size = hmask.sum(1)
    h_ptr = torch.cumsum(h_size, 0) - h_size
    slot = torch.zeros(m + 1, dtype=torch.int64, device=dev)
    slot[cand_rows] = torch.arange(len(cand_rows), device=dev)
    cand = _take(slot, r_col)  # candidate index of each (i, j) entry
    e_src, e_at = _ragged(_take(h_ptr, cand), _take(h_size, cand))  # every (i, j, l), l in R(j, k1/2)
    e_row, e_col = _take(r_row, e_src), _take(hfwd[hmask], e_at)
    # One sort of (i, col, origin) keys: origin 0 = member of R(i, k1) (distance known), origin 1 =
    # member of a candidate's R(j, k1/2). Equal (i, col) are adjacent with origin 0 first, so a
    # group starting with origin 0 is a col inside R(i, k1).
    span = m + 1
    n_r, n_e = len(r_row), len(e_row)
    keys, order = torch.cat([(r_row * span + r_col) * 2, (e_row * span + e_col) * 2 + 1]).sort()
    pair = keys // 2
    starts = torch.ones_like(pair, dtype=torch.bool)
    starts[1:] = pair[1:] != pair[:-1]
    group = torch.cumsum(starts, 0) - 1
    in_r = _take(keys[starts] % 2 == 0, group)
    # Back to entry order (inverse permutation), then count per (i, j): |R(j, k1/2) ∩ R(i, k1)|.
    in_r_entry = torch.empty_like(in_r).scatter_(0, order, in_r)
    inside = torch.zeros(n_r, dtype=torch.int64, device=dev).index_add_(
        0, e_src, in_r_entry[n_r:].to(torch.int64)
    )
    # Same float expression as the standard's `> 2./3*len(...)`, so boundary cases agree exactly.
    expand = inside.double() > (2.0 / 3.0) * _take(h_size, cand).double()
    kept = _take(torch.cat([torch.ones(n_r, dtype=torch.bool, device=dev), _take(expand, e_src)]), order)
    # Keep the first kept entry of each (i, col) group (origin 0 when col is in R(i, k1)).
    before = torch.cumsum(kept, 0) - kept.to(torch.int64)
    first = kept & (before == _take(before[starts], group))
    pair = pair[first]
    known = torch.cat(
        [
            _take(lists.dist[:, :a], rows)[rmask],
            torch.full((n_e,), float("nan"), dtype=lists.dist.dtype, device=dev),
        ]
    )
    counts = torch.bincount(pair // span, minlength=len(rows))
    return counts, pair % span, _take(known, order[first])


def _expanded_weights(lists: _Lists, rows: Tensor, k1: int, pair_dist: PairDistance) -> _CSR:
    """V(i, .) for i in rows as sparse rows (see module docstring)."""
    parts = []
    for s in range(0, len(rows), _ROW_CHUNK):
        chunk = rows[s : s + _ROW_CHUNK]
        counts, cols, dist = _expanded_members(lists, chunk, k1)
        owner = torch.repeat_interleave(
            torch.arange(len(chunk), device=rows.device), counts, output_size=len(cols)
        )
        unknown = torch.isnan(dist)
        if bool(unknown.any()):
            dist[unknown] = pair_dist(_take(chunk, owner[unknown]), cols[unknown]).to(dist.dtype)
        w = torch.exp(-dist / _take(_take(lists.rowmax, chunk), owner))
        total = torch.zeros(len(chunk), dtype=w.dtype, device=w.device).index_add_(0, owner, w)
        indptr = torch.zeros(len(chunk) + 1, dtype=torch.int64, device=rows.device)
        indptr[1:] = torch.cumsum(counts, 0)
        parts.append(_CSR(indptr, cols, w / _take(total, owner)))
    return _CSR.concat(parts)


def _gather_rows(v: _CSR, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Entries of the given rows of v -> (owner position in rows, cols, vals)."""
    starts = _take(v.indptr, rows)
    owner, pos = _ragged(starts, _take(v.indptr, rows + 1) - starts)
    return owner, _take(v.cols, pos), _take(v.vals, pos)


def _query_expanded(v: _CSR, pos_of: Tensor, lists: _Lists, rows: Tensor, k2: int) -> _CSR:
    """V'(i, .) for i in rows: the mean of V over the k2 nearest of i (V itself when k2 = 1).

    pos_of: [M + 1] position in v of each item (v must hold every needed row). V' = A V with A
    the sparse averaging matrix, one sparse-sparse product (column order within a row of the
    result is unspecified).
    """
    m = lists.size
    if k2 == 1:
        owner, cols, vals = _gather_rows(v, _take(pos_of, rows))
        indptr = torch.zeros(len(rows) + 1, dtype=torch.int64, device=rows.device)
        indptr[1:] = torch.cumsum(torch.bincount(owner, minlength=len(rows)), 0)
        return _CSR(indptr, cols, vals)
    nb = _take(lists.idx[:, :k2].contiguous(), rows)
    present = nb != m
    count = present.sum(1)
    a_ptr = torch.zeros(len(rows) + 1, dtype=torch.int64, device=rows.device)
    a_ptr[1:] = torch.cumsum(count, 0)
    weight = torch.repeat_interleave(1.0 / count.to(v.vals.dtype), count, output_size=int(a_ptr[-1]))
    n_v = len(v.indptr) - 1
    average = torch.sparse_csr_tensor(
        a_ptr, _take(pos_of, nb[present]), weight, size=(len(rows), n_v), check_invariants=False
    )
    product = average @ torch.sparse_csr_tensor(
        v.indptr, v.cols, v.vals, size=(n_v, m + 1), check_invariants=False
    )
    return _CSR(product.crow_indices(), product.col_indices(), product.values())


def _jaccard_min(v: _CSR, q_rows: Tensor, g_rows: Tensor, m: int) -> Iterator[tuple[int, int, Tensor]]:
    """Yield (a, b, S) with S[i, j] = sum_l min(v[q_rows[a + i], l], v[g_rows[j], l]) [b - a, ng].

    Only pairs of entries sharing a column contribute (the standard's inverted-index trick).
    """
    dev = v.cols.device
    ng = len(g_rows)
    # The gallery side holds every gallery row's entries (about G * k2 * 1.5 * k1 of them) through
    # the whole loop: int32 ids and prompt frees keep it to a third of the int64 form.
    g_owner, g_cols, g_vals = _gather_rows(v, g_rows)
    g_cols = g_cols.to(torch.int32)
    g_owner = g_owner.to(torch.int32)
    order = torch.argsort(g_cols, stable=True)
    col_ptr = torch.zeros(m + 2, dtype=torch.int64, device=dev)
    col_ptr[1:] = torch.cumsum(torch.bincount(g_cols, minlength=m + 1), 0)
    del g_cols
    g_owner, g_vals = _take(g_owner, order), _take(g_vals, order)
    del order
    q_owner, q_cols, q_vals = _gather_rows(v, q_rows)
    starts = _take(col_ptr, q_cols)
    n_pairs = _take(col_ptr, q_cols + 1) - starts
    q_entry_ptr = torch.zeros(len(q_rows) + 1, dtype=torch.int64, device=dev)
    q_entry_ptr[1:] = torch.cumsum(torch.bincount(q_owner, minlength=len(q_rows)), 0)
    per_query = torch.zeros(len(q_rows), dtype=torch.int64, device=dev).index_add_(0, q_owner, n_pairs)
    cum = torch.cumsum(per_query, 0).tolist()
    entry_ptr = q_entry_ptr.tolist()
    a = 0
    while a < len(q_rows):
        done = cum[a - 1] if a else 0
        # Bounded by pairs (the gathered work) and by rows (the dense [b - a, G] block of sums,
        # which at G = 50k would otherwise reach ~1 GB beside the 2 GB answer).
        b, b_max = a + 1, min(len(q_rows), a + max(1, _SUM_CHUNK // max(ng, 1)))
        while b < b_max and cum[b] - done <= _PAIR_CHUNK:
            b += 1
        e0, e1, total = entry_ptr[a], entry_ptr[b], cum[b - 1] - done
        lens = n_pairs[e0:e1]
        # Pair p of query entry e: gallery entry starts[e] + (p - first pair of e).
        pos = torch.arange(total, device=dev)
        pos += torch.repeat_interleave(
            starts[e0:e1] - (torch.cumsum(lens, 0) - lens), lens, output_size=total
        )
        flat = torch.repeat_interleave((q_owner[e0:e1] - a) * ng, lens, output_size=total)
        flat += _take(g_owner, pos)
        mins = torch.repeat_interleave(q_vals[e0:e1], lens, output_size=total)
        torch.minimum(mins, _take(g_vals, pos), out=mins)
        out = torch.zeros((b - a) * ng, dtype=v.vals.dtype, device=dev).index_add_(0, flat, mins)
        yield a, b, out.view(b - a, ng)
        a = b


def _mix_into(original: Tensor, min_sum: Tensor, lambda_value: float) -> Tensor:
    """original <- lambda * original + (1 - lambda) * (1 - sum(min) / sum(max)), in place.

    sum(max) = 2 - sum(min) because every row of V' sums to 1; min_sum is overwritten.
    """
    ratio = min_sum.div_(min_sum.neg().add_(2.0))
    return original.mul_(lambda_value).add_(ratio.neg_().add_(1.0), alpha=1.0 - lambda_value)


# ---- exact re-ranking ----------------------------------------------------------------------------


def _merge_nearest(cur_v: Tensor, cur_i: Tensor, new_v: Tensor, new_i: Tensor) -> tuple[Tensor, Tensor]:
    """Keep the W smallest of two [R, *] candidate sets (W = cur's width)."""
    v = torch.cat([cur_v, new_v], 1)
    i = torch.cat([cur_i, new_i], 1)
    best_v, at = v.topk(cur_v.shape[1], dim=1, largest=False)
    return best_v, i.gather(1, at)


def _offer(best_v: Tensor, best_i: Tensor, d: Tensor, base: int) -> None:
    """Merge a distance block into sorted neighbour lists, in place.

    best_v, best_i: [R, W] lists of the receiving rows (views); row r receives d[r, j] [R, C] as
    neighbour base + j.
    """
    v, at = d.topk(min(best_v.shape[1], d.shape[1]), dim=1, largest=False)
    new_v, new_i = _merge_nearest(best_v, best_i, v, at + base)
    best_v.copy_(new_v)
    best_i.copy_(new_i)


def _sort_lists(v: Tensor, i: Tensor) -> tuple[Tensor, Tensor]:
    """Order each row by (distance, index) so ties break by index as in a stable argsort."""
    by_index = torch.argsort(i, dim=1, stable=True)
    v, i = v.gather(1, by_index), i.gather(1, by_index)
    by_dist = torch.argsort(v, dim=1, stable=True)
    return v.gather(1, by_dist), i.gather(1, by_dist)


def _exact_lists(x: Tensor, num_q: int, width: int) -> tuple[_Lists, Tensor]:
    """Neighbour lists over all rows of x [N, d] and the raw query-gallery block [Q, N - Q].

    Each block pair (I, J >= I) of the squared-distance matrix is computed once and feeds the
    lists and row maxima of both I (its rows) and J (its columns).
    """
    n = x.shape[0]
    dev, dt = x.device, x.dtype
    sq = (x * x).sum(1, keepdim=True)
    one = torch.ones_like(sq)

    # [x, |x|^2, 1] . [-2y, 1, |y|^2] = |x - y|^2: the whole distance block comes out of one product.
    # The augmented rows are made per block, not for all N at once: two N x (d + 2) copies would
    # sit beside the [Q, G] answer (370 MB at N = 60k, d = 768).
    def left(a: int, b: int) -> Tensor:
        return torch.cat([x[a:b], sq[a:b], one[a:b]], 1)

    def right(a: int, b: int) -> Tensor:
        return torch.cat([-2.0 * x[a:b], one[a:b], sq[a:b]], 1)

    best_v = torch.full((n, width), float("inf"), dtype=dt, device=dev)
    best_i = torch.full((n, width), n, dtype=torch.int64, device=dev)
    rowmax = torch.zeros(n, dtype=dt, device=dev)
    qg = torch.empty((num_q, n - num_q), dtype=dt, device=dev)
    for i0 in range(0, n, _BLOCK):
        i1 = min(i0 + _BLOCK, n)
        rows = left(i0, i1)
        for j0 in range(i0, n, _BLOCK):
            j1 = min(j0 + _BLOCK, n)
            d = rows @ right(j0, j1).T
            if i0 == j0:
                d.diagonal().zero_()
            rowmax[i0:i1] = torch.maximum(rowmax[i0:i1], d.amax(1))
            _offer(best_v[i0:i1], best_i[i0:i1], d, j0)
            if j0 != i0:
                d_t = d.T.contiguous()  # rows of J: contiguous reductions are much faster
                rowmax[j0:j1] = torch.maximum(rowmax[j0:j1], d_t.amax(1))
                _offer(best_v[j0:j1], best_i[j0:j1], d_t, i0)
            r1, c0 = min(i1, num_q), max(j0, num_q)
            if r1 > i0 and j1 > c0:
                qg[i0:r1, c0 - num_q : j1 - num_q] = d[: r1 - i0, c0 - j0 :]
    best_v, best_i = _sort_lists(best_v, best_i)
    idx = torch.cat([best_i, torch.full((1, width), n, dtype=torch.int64, device=dev)])
    dist = torch.cat([best_v, torch.full((1, width), float("inf"), dtype=dt, device=dev)])
    # A row of identical descriptors has max 0; the standard divides by zero there (NaN).
    rowmax = torch.where(rowmax > 0, rowmax, torch.ones_like(rowmax))
    return _Lists(idx, dist, rowmax), qg


def _feature_pair_distance(x: Tensor, sq: Tensor) -> PairDistance:
    """d(a, b) = |x_a|^2 + |x_b|^2 - 2 x_a . x_b for index pairs, computed in gathered chunks
    (as the blocks, unclamped: rounding can leave near-duplicates a hair below 0, as in the standard)."""

    def pair_distance(a: Tensor, b: Tensor) -> Tensor:
        out = torch.empty(len(a), dtype=x.dtype, device=x.device)
        for s in range(0, len(a), _GATHER_CHUNK):
            aa, bb = a[s : s + _GATHER_CHUNK], b[s : s + _GATHER_CHUNK]
            dot = torch.bmm(_take(x, aa).unsqueeze(1), _take(x, bb).unsqueeze(2)).view(-1)
            out[s : s + _GATHER_CHUNK] = _take(sq, aa) + _take(sq, bb) - 2.0 * dot
        return torch.where(a == b, torch.zeros_like(out), out)

    return pair_distance


def k_reciprocal(
    qf: np.ndarray | Tensor,
    gf: np.ndarray | Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray | Tensor:
    """k-reciprocal re-ranked distances [Q, G] between query descriptors qf [Q, d] and gallery
    descriptors gf [G, d] (Zhong et al. 2017, exactly as the standard implementation; see the
    module docstring). The original distance is the SQUARED Euclidean distance of the descriptors
    (callers with Euclidean distances would square them), normalised per row by its max over all
    Q + G items; the returned value mixes (1 - lambda) * Jaccard + lambda * that normalised
    distance. Lower = closer.

    numpy in -> numpy out; torch in -> torch out on the input's device (CPU or CUDA). Computed in
    float64 when an input is float64, else float32. Exact ties at the k-th neighbour are broken
    arbitrarily (the standard's quicksort is unstable there too); elsewhere ties go by index.
    Memory is O(N * k1^2 + Q * G): no dense N x N array is formed; beyond the [Q, G] answer and
    one float copy of the descriptors, only bounded blocks (bench/RESULTS.md, "Exact re-ranking
    beyond 10k").
    """
    _check_params(k1, k2, lambda_value)
    if isinstance(qf, np.ndarray) and isinstance(gf, np.ndarray):
        as_numpy = True
        q_t, g_t = torch.from_numpy(qf), torch.from_numpy(gf)
    elif isinstance(qf, Tensor) and isinstance(gf, Tensor):
        as_numpy = False
        q_t, g_t = qf.detach(), gf.detach()
        if q_t.device != g_t.device:
            raise ValueError(f"qf is on {q_t.device} but gf is on {g_t.device}")
    else:
        raise ValueError(
            f"qf and gf must both be numpy arrays or both torch tensors, got {type(qf).__name__} "
            f"and {type(gf).__name__}"
        )
    if q_t.ndim != 2 or g_t.ndim != 2 or q_t.shape[1] != g_t.shape[1]:
        raise ValueError(
            f"qf [Q, d] and gf [G, d] must be 2-D with equal d, got {tuple(q_t.shape)} and {tuple(g_t.shape)}"
        )
    if not q_t.is_floating_point() or not g_t.is_floating_point():
        raise ValueError("qf and gf must be floating-point descriptors")
    dtype = torch.float64 if torch.float64 in (q_t.dtype, g_t.dtype) else torch.float32
    num_q, num_g = q_t.shape[0], g_t.shape[0]
    x = torch.cat([q_t, g_t]).to(dtype)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("qf and gf must be finite")
    if num_q == 0 or num_g == 0:
        out = torch.zeros((num_q, num_g), dtype=dtype, device=x.device)
        return out.cpu().numpy() if as_numpy else out
    n = num_q + num_g
    lists, final = _exact_lists(x, num_q, min(max(k1 + 1, k2), n))
    final /= lists.rowmax[:num_q, None]
    rows = torch.arange(n, device=x.device)
    v = _expanded_weights(lists, rows, k1, _feature_pair_distance(x, (x * x).sum(1)))
    v = _query_expanded(v, torch.cat([rows, rows.new_full((1,), -1)]), lists, rows, k2)
    for a, b, min_sum in _jaccard_min(v, rows[:num_q], rows[num_q:], n):
        _mix_into(final[a:b], min_sum, lambda_value)
    return final.cpu().numpy() if as_numpy else final
