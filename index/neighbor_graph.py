"""The gallery's k-nearest-neighbour graph, kept up to date on add/remove, and k-reciprocal
re-ranking of one query restricted to its candidates (``GalleryNeighborGraph.rerank``), built from
the sparse steps of ``index.rerank``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from index.rerank import (
    Tensor,
    _check_params,
    _expanded_weights,
    _half,
    _jaccard_min,
    _Lists,
    _mix_into,
    _offer,
    _query_expanded,
)

_NORM_TOLERANCE = 1e-3  # unit-norm check of graph descriptors
_GRAPH_ROWS = 2048  # new/recomputed rows per block of the graph's distance computations
_GRAPH_COLS = 8192  # columns per block


def _check_unit_rows(x: np.ndarray, dim: int, name: str) -> np.ndarray:
    """x as a C-contiguous float32 [n, dim] array of unit rows, or ValueError naming the problem."""
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[1] != dim:
        raise ValueError(f"{name} must have shape [n, {dim}], got {a.shape}")
    if a.dtype.kind != "f":
        raise ValueError(f"{name} must be floating point, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite values")
    norms = np.linalg.norm(a, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > _NORM_TOLERANCE)
    if len(bad):
        raise ValueError(f"{name} rows must be L2-normalised: row {bad[0]} has norm {norms[bad[0]]:.6f}")
    return a


def _check_ids(ids: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if len(np.unique(a)) != len(a):
        raise ValueError(f"{name} contains duplicates")
    return a


def _unit_sqdist(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distance of unit vectors, 2 - 2 a.b^T, clamped at 0: float32 [len(a), len(b)].

    Accumulated in float64 and rounded to float32: a float32 product's last bits depend on the
    block it is computed in (BLAS kernels sum in different orders for different shapes), and the
    graph meets each pair in different blocks when it grows item by item than when it is built at
    once. Rounded from float64, a pair's distance is the same either way, so an incrementally
    maintained graph and a rebuilt one hold the same lists and row maxima.
    """
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    d = torch.addmm(torch.full((1, 1), 2.0, dtype=torch.float64), a64, b64.T, alpha=-2.0).clamp_(min=0.0)
    return d.to(torch.float32)


def _raise_max(rmax: Tensor, rarg: Tensor, d: Tensor, base: int) -> None:
    """Running row maxima, in place: rmax [R] / rarg [R] take d [R, C]'s row max (column base + j)
    where it is larger; ties keep the earlier column, so the arg is the first row attaining it."""
    block_max, block_arg = d.max(1)
    higher = block_max > rmax
    rmax.copy_(torch.where(higher, block_max, rmax))
    rarg.copy_(torch.where(higher, block_arg + base, rarg))


@dataclass(frozen=True)
class GraphState:
    """A graph's lists and maxima without its descriptors, independent of storage order.

    Items are in ascending id order; lists point at positions in that order:
      * ids int64 [n] (ascending, unique);
      * nbr int32 [n, width]: positions of each item's nearest items, nearest first, -1 = none;
      * nbr_d float32 [n, width]: their squared distances, inf = none;
      * complete bool [n]: the list holds every other item;
      * rowmax float32 [n]: the item's largest distance to any item (itself included);
      * rowarg int32 [n]: the position of an item attaining rowmax, -1 = none (all distances 0).
    ``width`` = k + slack, ``dim`` the descriptors' dimension the graph was built for.
    """

    dim: int
    k: int
    width: int
    ids: np.ndarray
    nbr: np.ndarray
    nbr_d: np.ndarray
    complete: np.ndarray
    rowmax: np.ndarray
    rowarg: np.ndarray

    def check(self) -> None:
        """ValueError naming the first inconsistency: shapes, dtypes, id order, list targets."""
        n, w = len(self.ids), self.width
        want = {
            "ids": ((n,), np.int64),
            "nbr": ((n, w), np.int32),
            "nbr_d": ((n, w), np.float32),
            "complete": ((n,), np.bool_),
            "rowmax": ((n,), np.float32),
            "rowarg": ((n,), np.int32),
        }
        for name, (shape, dtype) in want.items():
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != dtype:
                got = (getattr(a, "shape", None), getattr(a, "dtype", None))
                raise ValueError(f"graph state {name}: expected {shape} {np.dtype(dtype)}, got {got}")
        if w != self.k + max(2, self.k // 3):
            raise ValueError(f"graph state width {w} does not belong to k={self.k}")
        if n > 1 and not (np.diff(self.ids) > 0).all():
            raise ValueError("graph state ids are not ascending and unique")
        for name in ("nbr", "rowarg"):
            a = getattr(self, name)
            if a.size and (a.min() < -1 or a.max() >= n):
                raise ValueError(f"graph state {name} points outside its {n} items")
        if n and (np.isnan(self.nbr_d).any() or np.isnan(self.rowmax).any()):
            raise ValueError("graph state holds NaN distances")
        if ((self.nbr >= 0) != np.isfinite(self.nbr_d)).any():
            raise ValueError("graph state lists and distances disagree on empty entries")


class GalleryNeighborGraph:
    """kNN graph over gallery descriptors, kept up to date as items are added/removed.

    Every item keeps a list of its nearest other items (distance = squared Euclidean = 2 - 2 cos
    on the unit-norm descriptors, ascending) and its row max m_i (its largest distance to any
    item) with the row attaining it: a removal recomputes exactly the rows whose maximum was a
    distance to a removed item (no distances to the removed items are needed, so a graph restored
    from ``GraphState`` can drop items whose descriptors are gone). Descriptors live in a growable
    float32 array with an id -> row map; removal moves the last rows into the holes.

    Lists hold up to k + slack entries and are always exactly the nearest items they hold: a
    removal just drops entries, and only a list left with fewer than k entries (while more items
    exist) is recomputed against the whole gallery. A list that has lost entries only takes a
    new item closer than its last entry (a farther one may not be the next nearest).

    ``rerank`` runs the k-reciprocal steps of ``k_reciprocal`` for one query restricted to its
    candidates and their graph neighbourhoods (cost independent of the gallery size):
      * the query's neighbour list is its candidates by distance; a gallery item's list is its
        graph list, with the query inserted where it is closer, for candidates only (a
        non-candidate is assumed too far from the query to hold it in its top k1);
      * normalisers m_i: the stored row max (raised to d(i, q) for candidates); for the query,
        the max distance to the candidates when they are the whole gallery (exact), else that
        or the nearest candidate's row max, whichever is larger (a far item of the query's
        nearest neighbour is about as far from the query);
      * other queries take no part (in a batch evaluation they also enter gallery items' lists).
    With the whole gallery as candidates this is ``k_reciprocal`` of the single query, up to
    float32 rounding. Per query the work grows with K * k2 * k1 * round(k1/2) list entries and
    O(K * k2 * k1 * d) for distances, not with the gallery size (bar O(G) bytes of scratch maps).

    Concurrent ``rerank`` calls are safe; ``add``/``remove`` must not run alongside anything else
    (the caller's lock).
    """

    def __init__(self, dim: int, k: int = 30) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        self.dim = dim
        self.k = k
        self._width = k + max(2, k // 3)  # stored list length: k plus slack for removals
        self._n = 0
        self._feats = np.empty((0, dim), dtype=np.float32)
        self._ids = np.empty(0, dtype=np.int64)
        self._nbr = np.empty((0, self._width), dtype=np.int64)  # rows of the nearest items, -1 = none
        self._nbr_d = np.empty((0, self._width), dtype=np.float32)  # their distances, inf = none
        self._complete = np.empty(0, dtype=bool)  # the list holds every other item
        self._rowmax = np.empty(0, dtype=np.float32)
        self._rowarg = np.empty(0, dtype=np.int64)  # the row attaining _rowmax, -1 = none yet
        self._row_of: dict[int, int] = {}

    def __len__(self) -> int:
        return self._n

    def __contains__(self, id_: object) -> bool:
        try:
            return int(id_) in self._row_of  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return False

    def ids(self) -> np.ndarray:
        """Ids of all items, in storage order: int64 [len(self)]."""
        return self._ids[: self._n].copy()

    def neighbors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Graph lists of the given items: (neighbour ids int64 [n, k], distances float32 [n, k]),
        nearest first; -1 / inf pad lists of a gallery with at most k items."""
        rows = self._rows_of(_check_ids(ids, "ids"))
        nbr = self._nbr[rows, : self.k]
        return np.where(nbr >= 0, self._ids[nbr], -1), self._nbr_d[rows, : self.k]

    def export_state(self) -> GraphState:
        """The lists and maxima as a ``GraphState`` (copies; items in id order)."""
        n = self._n
        order = np.argsort(self._ids[:n], kind="stable")
        pos = np.empty(n + 1, dtype=np.int32)  # row -> position; index n (= -1) stays -1
        pos[order] = np.arange(n, dtype=np.int32)
        pos[n] = -1
        return GraphState(
            dim=self.dim,
            k=self.k,
            width=self._width,
            ids=self._ids[order].copy(),
            nbr=pos[self._nbr[order]],
            nbr_d=self._nbr_d[order].copy(),
            complete=self._complete[order].copy(),
            rowmax=self._rowmax[order].copy(),
            rowarg=pos[self._rowarg[order]],
        )

    @classmethod
    def from_state(cls, state: GraphState, feats: np.ndarray) -> GalleryNeighborGraph:
        """A graph holding ``state``'s lists over descriptors ``feats`` (float32 [n, dim], row i for
        ``state.ids[i]``), without computing a distance. Rows of items about to be removed may hold
        anything (e.g. zeros for a deleted descriptor): ``remove`` never reads their descriptors.
        The caller vouches that ``state`` was exported for these descriptors."""
        state.check()
        n = len(state.ids)
        feats = np.asarray(feats)
        if feats.shape != (n, state.dim):
            raise ValueError(f"feats must have shape [{n}, {state.dim}], got {feats.shape}")
        graph = cls(state.dim, k=state.k)
        graph._reserve(n)
        graph._n = n
        graph._feats[:n] = feats
        graph._ids[:n] = state.ids
        graph._nbr[:n] = state.nbr
        graph._nbr_d[:n] = state.nbr_d
        graph._complete[:n] = state.complete
        graph._rowmax[:n] = state.rowmax
        graph._rowarg[:n] = state.rowarg
        graph._row_of = dict(zip(state.ids.tolist(), range(n), strict=True))
        return graph

    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        try:
            return np.fromiter((self._row_of[i] for i in ids.tolist()), dtype=np.int64, count=len(ids))
        except KeyError as e:
            raise KeyError(f"id {e.args[0]} is not in the gallery graph") from None

    def _reserve(self, n: int) -> None:
        cap = len(self._ids)
        if n <= cap:
            return
        cap = max(n, cap + cap // 2, 1024)

        def grown(a: np.ndarray) -> np.ndarray:
            out = np.empty((cap, *a.shape[1:]), dtype=a.dtype)  # rows >= n are written by add
            out[: self._n] = a[: self._n]
            return out

        self._feats = grown(self._feats)
        self._ids = grown(self._ids)
        self._nbr = grown(self._nbr)
        self._nbr_d = grown(self._nbr_d)
        self._complete = grown(self._complete)
        self._rowmax = grown(self._rowmax)
        self._rowarg = grown(self._rowarg)

    def add(self, ids: np.ndarray, feats: np.ndarray) -> None:
        """Add items (ids int64 [n], new and unique; feats float32 [n, dim], unit norm)."""
        ids = _check_ids(ids, "ids")
        feats = _check_unit_rows(feats, self.dim, "feats")
        if len(feats) != len(ids):
            raise ValueError(f"ids has {len(ids)} entries but feats has {len(feats)} rows")
        present = [i for i in ids.tolist() if i in self._row_of]
        if present:
            raise ValueError(f"ids already in the gallery graph: {present[:5]}")
        if len(ids) == 0:
            return
        n0, n1 = self._n, self._n + len(ids)
        self._reserve(n1)
        self._feats[n0:n1] = feats
        self._ids[n0:n1] = ids
        self._nbr[n0:n1] = -1
        self._nbr_d[n0:n1] = np.inf
        self._complete[n0:n1] = True  # complete over the items seen so far while being linked
        self._rowmax[n0:n1] = 0.0
        self._rowarg[n0:n1] = -1
        self._row_of.update(zip(ids.tolist(), range(n0, n1), strict=True))
        self._n = n1
        self._link_new_rows(n0)
        self._complete[:n1] &= (self._nbr[:n1] >= 0).sum(1) == n1 - 1

    def _link_new_rows(self, n0: int) -> None:
        """Lists of rows [n0, n) against all rows, and insertion of them into older rows' lists.

        Each pair is computed once: a new block sees all columns before its end, and the rows
        before the block (older items and earlier new blocks) take the block's rows as neighbour
        candidates.
        """
        n, w = self._n, self._width
        feats = torch.from_numpy(self._feats[:n])
        nbr = torch.from_numpy(self._nbr[:n])  # views: writes land in the numpy arrays
        nbr_d = torch.from_numpy(self._nbr_d[:n])
        rowmax = torch.from_numpy(self._rowmax[:n])
        rowarg = torch.from_numpy(self._rowarg[:n])
        for i0 in range(n0, n, _GRAPH_ROWS):
            i1 = min(i0 + _GRAPH_ROWS, n)
            best_v = torch.full((i1 - i0, w), float("inf"))
            best_i = torch.full((i1 - i0, w), -1, dtype=torch.int64)
            rmax = torch.zeros(i1 - i0)
            rarg = torch.full((i1 - i0,), -1, dtype=torch.int64)
            for j0 in range(0, i1, _GRAPH_COLS):
                j1 = min(j0 + _GRAPH_COLS, i1)
                d = _unit_sqdist(feats[i0:i1], feats[j0:j1])
                _raise_max(rmax, rarg, d, j0)
                lo, hi = max(i0, j0), min(i1, j1)
                if lo < hi:
                    self_rows = torch.arange(lo, hi)
                    d[self_rows - i0, self_rows - j0] = float("inf")
                _offer(best_v, best_i, d, j0)
                c1 = min(j1, i0)  # rows before this block: older items and earlier new blocks
                if c1 > j0:
                    old = d[:, : c1 - j0]
                    col_max, col_arg = old.max(0)
                    higher = col_max > rowmax[j0:c1]
                    rowmax[j0:c1] = torch.where(higher, col_max, rowmax[j0:c1])
                    rowarg[j0:c1] = torch.where(higher, col_arg + i0, rowarg[j0:c1])
                    # Only older rows whose last distance the block beats need a merge.
                    upd = torch.nonzero(old.amin(0) < nbr_d[j0:c1, w - 1]).squeeze(1)
                    if len(upd):
                        r = upd + j0
                        nv, ni = nbr_d[r], nbr[r]
                        cand = old[:, upd]
                        limit = self._admission_limit(r.numpy(), ni, nv)
                        if bool(torch.isfinite(limit).any()):
                            cand = torch.where(cand < limit[None, :], cand, float("inf"))
                        _offer(nv, ni, cand.T.contiguous(), i0)
                        ni[torch.isinf(nv)] = -1
                        nbr_d[r], nbr[r] = nv, ni
            best_i[torch.isinf(best_v)] = -1
            nbr_d[i0:i1], nbr[i0:i1] = best_v, best_i
            rowmax[i0:i1], rowarg[i0:i1] = rmax, rarg

    def _admission_limit(self, rows: np.ndarray, nbr: Tensor, nbr_d: Tensor) -> Tensor:
        """Per row, the distance below which a new item may enter its list: inf for a complete or
        full list, else its last entry's distance (the list is exact only up to there)."""
        count = (nbr >= 0).sum(1)
        last = nbr_d.gather(1, (count - 1).clamp(min=0)[:, None]).squeeze(1)
        open_ended = torch.from_numpy(self._complete[rows]) | (count == nbr.shape[1])
        return torch.where(open_ended, torch.full_like(last, float("inf")), last)

    def _recompute_rows(self, rows: np.ndarray) -> None:
        """Recompute the lists, completeness and row maxima of the given rows against all rows."""
        n, w = self._n, self._width
        feats = torch.from_numpy(self._feats[:n])
        for s in range(0, len(rows), _GRAPH_ROWS):
            r = torch.from_numpy(rows[s : s + _GRAPH_ROWS])
            best_v = torch.full((len(r), w), float("inf"))
            best_i = torch.full((len(r), w), -1, dtype=torch.int64)
            rmax = torch.zeros(len(r))
            rarg = torch.full((len(r),), -1, dtype=torch.int64)
            fr = feats[r]
            for j0 in range(0, n, _GRAPH_COLS):
                j1 = min(j0 + _GRAPH_COLS, n)
                d = _unit_sqdist(fr, feats[j0:j1])
                _raise_max(rmax, rarg, d, j0)
                own = torch.nonzero((r >= j0) & (r < j1)).squeeze(1)
                d[own, r[own] - j0] = float("inf")
                _offer(best_v, best_i, d, j0)
            best_i[torch.isinf(best_v)] = -1
            self._nbr[r.numpy()] = best_i.numpy()
            self._nbr_d[r.numpy()] = best_v.numpy()
            self._complete[r.numpy()] = (best_i >= 0).sum(1).numpy() == n - 1
            self._rowmax[r.numpy()] = rmax.numpy()
            self._rowarg[r.numpy()] = rarg.numpy()

    def remove(self, ids: np.ndarray) -> None:
        """Remove items (unknown ids -> KeyError, nothing removed) and repair the lists that held them:
        their entries are dropped, and lists left shorter than k are recomputed."""
        ids = _check_ids(ids, "ids")
        rows = self._rows_of(ids)
        if len(rows) == 0:
            return
        n = self._n
        keep_n = n - len(rows)
        gone = np.zeros(n + 1, dtype=bool)  # index n stands for the -1 "no neighbour" entries
        gone[rows] = True
        affected = np.flatnonzero(gone[self._nbr[:n]].any(1) & ~gone[:n])
        holes = np.sort(rows[rows < keep_n])
        movers = np.flatnonzero(~gone[keep_n:n]) + keep_n
        remap = np.arange(n + 1)
        remap[rows] = -1
        remap[movers] = holes
        remap[n] = -1
        # Drop the removed entries from the affected lists, keeping them sorted (inf sorts last).
        nb, nd = self._nbr[affected], self._nbr_d[affected]
        dropped = gone[nb]
        nb[dropped], nd[dropped] = -1, np.inf
        order = np.argsort(nd, axis=1, kind="stable")
        self._nbr[affected] = np.take_along_axis(nb, order, 1)
        self._nbr_d[affected] = np.take_along_axis(nd, order, 1)
        short = affected[((self._nbr[affected] >= 0).sum(1) < self.k) & ~self._complete[affected]]
        # Rows whose row max was a distance to a removed item: recomputed below, so the maxima stay
        # exact (a stale, larger max changes every re-ranking weight of that row). A tie with a
        # kept item needs no recompute: the max over the kept items is the same value.
        stale = np.flatnonzero(gone[self._rowarg[:n]] & ~gone[:n])
        for a in (self._feats, self._ids, self._nbr, self._nbr_d, self._complete, self._rowmax, self._rowarg):
            a[holes] = a[movers]
        for i in ids.tolist():
            del self._row_of[i]
        self._row_of.update(zip(self._ids[holes].tolist(), holes.tolist(), strict=True))
        self._n = keep_n
        self._nbr[:keep_n] = remap[self._nbr[:keep_n]]
        self._rowarg[:keep_n] = remap[self._rowarg[:keep_n]]
        self._recompute_rows(remap[short])
        self._recompute_rowmax(np.setdiff1d(remap[stale], remap[short]))

    def _recompute_rowmax(self, rows: np.ndarray) -> None:
        """Recompute the row maxima of the given rows against all rows."""
        n = self._n
        feats = torch.from_numpy(self._feats[:n])
        for s in range(0, len(rows), _GRAPH_ROWS):
            r = torch.from_numpy(rows[s : s + _GRAPH_ROWS])
            rmax = torch.zeros(len(r))
            rarg = torch.full((len(r),), -1, dtype=torch.int64)
            fr = feats[r]
            for j0 in range(0, n, _GRAPH_COLS):
                _raise_max(rmax, rarg, _unit_sqdist(fr, feats[j0 : min(j0 + _GRAPH_COLS, n)]), j0)
            self._rowmax[r.numpy()] = rmax.numpy()
            self._rowarg[r.numpy()] = rarg.numpy()

    def rerank(
        self,
        query: np.ndarray,
        candidate_ids: np.ndarray,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
    ) -> np.ndarray:
        """Re-ranked distance float32 [K] of a unit-norm query [dim] to each of its candidates
        (gallery ids [K], e.g. its FAISS top-K), in candidate order; lower = better. See the class
        docstring for how this approximates ``k_reciprocal``. Requires k1 <= k and k2 <= k + 1."""
        _check_params(k1, k2, lambda_value)
        if k1 > self.k:
            raise ValueError(f"k1={k1} exceeds the graph's neighbour-list length k={self.k}")
        if k2 > self.k + 1:
            raise ValueError(f"k2={k2} exceeds the graph's neighbour-list length + 1 ({self.k + 1})")
        q = _check_unit_rows(np.asarray(query).reshape(1, -1), self.dim, "query")[0]
        cand = _check_ids(candidate_ids, "candidate_ids")
        if len(cand) == 0:
            return np.empty(0, dtype=np.float32)
        rows = self._rows_of(cand)
        n, k, width = self._n, self.k, self.k + 1
        qid = n  # the query's id in the graph's row space
        num_c = len(rows)
        dq = np.maximum(2.0 - 2.0 * (self._feats[rows] @ q), 0.0).astype(np.float32)

        # Neighbour lists in row space, self first: the query's from its candidates, candidates'
        # with the query inserted (after equal distances: its row id is the largest).
        near = np.lexsort((cand, dq))[: width - 1]  # ties by id: independent of storage order
        q_idx = np.full(width, -1, dtype=np.int64)
        q_dst = np.full(width, np.inf, dtype=np.float32)
        q_idx[0], q_dst[0] = qid, 0.0
        q_idx[1 : 1 + len(near)], q_dst[1 : 1 + len(near)] = rows[near], dq[near]
        c_idx = np.concatenate([self._nbr[rows, :k], np.full((num_c, 1), qid)], 1)
        c_dst = np.concatenate([self._nbr_d[rows, :k], dq[:, None]], 1)
        o = np.argsort(c_dst, axis=1, kind="stable")[:, :k]
        c_idx, c_dst = np.take_along_axis(c_idx, o, 1), np.take_along_axis(c_dst, o, 1)
        # Dense maps over the row space (0..n-1 gallery, n the query, n+1 catches -1 entries):
        # O(n) bytes per call, but far cheaper than sorting/searching the sets below.
        cand_of = np.full(n + 2, -1, dtype=np.int64)
        cand_of[rows] = np.arange(num_c)

        def lists_of(items: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
            out_i = np.empty((len(items), w), dtype=np.int64)
            out_d = np.empty((len(items), w), dtype=np.float32)
            out_i[:, 0], out_d[:, 0] = items, 0.0
            gal = items < qid
            g = items[gal]
            li, ld = self._nbr[g, : w - 1], self._nbr_d[g, : w - 1]
            ci = cand_of[g]
            is_c = ci >= 0
            li[is_c], ld[is_c] = c_idx[ci[is_c], : w - 1], c_dst[ci[is_c], : w - 1]
            out_i[gal, 1:], out_d[gal, 1:] = li, ld
            out_i[~gal], out_d[~gal] = q_idx[:w], q_dst[:w]
            return out_i, out_d

        def grow(items: np.ndarray, prefix: int) -> np.ndarray:
            mark = np.zeros(n + 2, dtype=bool)
            mark[items] = True
            mark[lists_of(items, prefix)[0]] = True
            mark[n + 1] = False
            return np.flatnonzero(mark)

        # Items whose lists the steps read: V rows (candidates' k2-neighbourhoods), their k1-lists,
        # and the round(k1/2)-lists of those. List entries outside this set become "absent".
        s0 = np.concatenate([[qid], rows])
        p_set = grow(s0, min(k2, width))
        universe = grow(grow(p_set, min(k1 + 1, width)), min(_half(k1) + 1, width))
        # Local order by id, the query last: the sparse steps' sums and tie-breaks then do not
        # depend on where items sit in storage (removals move rows; a rebuild stores by id).
        in_gallery = universe[universe < qid]
        universe = np.concatenate([in_gallery[np.argsort(self._ids[in_gallery], kind="stable")], universe[universe >= qid]])
        m = len(universe)
        local = np.full(n + 2, m, dtype=np.int64)
        local[universe] = np.arange(m)
        w = max(k1 + 1, k2)  # the steps read no further down a list
        li, ld = lists_of(universe, w)
        li = local[li]
        idx = np.vstack([li, np.full((1, w), m)])
        dist = np.vstack([np.where(li < m, ld, np.inf), np.full((1, w), np.inf)]).astype(np.float32)
        rowmax = np.empty(m, dtype=np.float32)
        gal = universe < qid
        rowmax[gal] = self._rowmax[universe[gal]]
        c_pos = local[rows]
        rowmax[c_pos] = np.maximum(rowmax[c_pos], dq)
        m_q = float(dq.max()) if num_c == n else max(float(dq.max()), float(self._rowmax[rows[dq.argmin()]]))
        rowmax[m - 1] = m_q  # the query's row id is the largest
        rowmax = np.where(rowmax > 0, rowmax, 1.0).astype(np.float32)
        lists = _Lists(torch.from_numpy(idx), torch.from_numpy(dist), torch.from_numpy(rowmax))

        feats_t, q_t, uni_t = (
            torch.from_numpy(self._feats[:n]),
            torch.from_numpy(q),
            torch.from_numpy(universe),
        )

        def pair_distance(a: Tensor, b: Tensor) -> Tensor:
            def gather(loc: Tensor) -> Tensor:
                g = uni_t[loc]
                f = feats_t[g.clamp(max=n - 1)]
                f[g == qid] = q_t
                return f

            d = (2.0 - 2.0 * (gather(a) * gather(b)).sum(1)).clamp_(min=0.0)
            return torch.where(a == b, torch.zeros_like(d), d)

        p_loc = torch.from_numpy(local[p_set])
        v = _expanded_weights(lists, p_loc, k1, pair_distance)
        pos_of = torch.full((m + 1,), -1, dtype=torch.int64)
        pos_of[p_loc] = torch.arange(len(p_loc))
        v = _query_expanded(v, pos_of, lists, torch.from_numpy(local[s0]), k2)
        ((_, _, min_sum),) = list(
            _jaccard_min(v, torch.zeros(1, dtype=torch.int64), torch.arange(1, num_c + 1), m)
        )
        out = torch.from_numpy((dq / np.float32(m_q if m_q > 0 else 1.0)).astype(np.float32))
        return _mix_into(out, min_sum[0], lambda_value).numpy()
