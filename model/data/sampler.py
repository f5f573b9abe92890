"""P x K identity-balanced batch sampler for metric-learning losses (batch-hard triplet, memory)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def _chunks_for_identity(indices: list[int], k: int, rng: np.random.Generator) -> list[list[int]]:
    """Split one identity's dataset indices into groups of exactly ``k``.

    The indices are shuffled and cut into ``ceil(n / k)`` groups; an identity with fewer than
    ``k`` tracklets is sampled with replacement, and a short last group is topped up with
    other indices of the same identity (without repeats where the identity has enough).
    """
    order = [indices[i] for i in rng.permutation(len(indices))]
    if len(order) < k:
        return [order + [order[i] for i in rng.integers(0, len(order), k - len(order))]]
    chunks = [order[i : i + k] for i in range(0, len(order), k)]
    last = chunks[-1]
    if len(last) < k:
        pool = [i for i in order if i not in last]
        last.extend(pool[j] for j in rng.choice(len(pool), k - len(last), replace=False))
    return chunks


def build_pk_batches(pids: Sequence[int], p: int, k: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of ``p`` distinct identities x ``k`` indices for one epoch (deterministic).

    Every tracklet of every identity appears in the epoch (some twice, from top-ups). Identities
    are chosen with probability proportional to their remaining groups, so large identities do
    not pile up at the end; when fewer than ``p`` identities have groups left, the last batch is
    completed with fresh groups of other identities.
    """
    by_pid: dict[int, list[int]] = {}
    for index, pid in enumerate(pids):
        by_pid.setdefault(int(pid), []).append(index)
    if len(by_pid) < p:
        raise ValueError(f"need at least p={p} identities for P x K batches, got {len(by_pid)}")
    rng = np.random.default_rng([seed, epoch])
    ids = sorted(by_pid)
    remaining = {pid: _chunks_for_identity(by_pid[pid], k, rng) for pid in ids}
    batches: list[list[int]] = []
    while any(remaining.values()):
        active = [pid for pid in ids if remaining[pid]]
        if len(active) >= p:
            weights = np.array([len(remaining[pid]) for pid in active], dtype=np.float64)
            chosen = [active[i] for i in rng.choice(len(active), p, replace=False, p=weights / weights.sum())]
            batch = [i for pid in chosen for i in remaining[pid].pop()]
        else:
            others = [pid for pid in ids if pid not in active]
            fill = [others[i] for i in rng.choice(len(others), p - len(active), replace=False)]
            batch = [i for pid in active for i in remaining[pid].pop()]
            batch += [i for pid in fill for i in _chunks_for_identity(by_pid[pid], k, rng)[0]]
        batches.append(batch)
    return batches


class IdentityBalancedSampler(Sampler[list[int]]):
    """Batch sampler yielding lists of ``p * k`` dataset indices: ``p`` identities, ``k`` each.

    Use as ``DataLoader(dataset, batch_sampler=sampler)``. Indices within a batch are grouped by
    identity (``k`` consecutive indices share a pid). Deterministic given ``seed`` and the epoch
    set with ``set_epoch``.

    Distributed (``world_size > 1``): every rank builds the same global batches of
    ``p * world_size`` identities from the shared seed and takes the ``rank``-th run of ``p``
    whole identities of each, so the ranks see disjoint identities and the same number of steps.
    """

    def __init__(self, pids: Sequence[int], p: int = 4, k: int = 4, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if p < 1 or k < 1:
            raise ValueError("p and k must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.pids = [int(x) for x in pids]
        self.p = p
        self.k = k
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        need = p * world_size
        if len(set(self.pids)) < need:
            across = f" (P={p} per rank x {world_size} ranks)" if world_size > 1 else ""
            raise ValueError(f"need at least p={need} identities for P x K batches{across}, got {len(set(self.pids))}")
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            batches = build_pk_batches(self.pids, self.p * self.world_size, self.k, self.seed, self.epoch)
            share = self.p * self.k
            self._cache = (self.epoch, [b[self.rank * share:(self.rank + 1) * share] for b in batches])
        return self._cache[1]

    def __iter__(self) -> Iterator[list[int]]:
        return iter([list(b) for b in self._batches()])

    def __len__(self) -> int:
        return len(self._batches())
