from __future__ import annotations

from collections import Counter

import pytest

from model.data.sampler import IdentityBalancedSampler


def _pids() -> list[int]:
    # 7 identities with 1..9 tracklets each, interleaved in dataset order.
    counts = {10: 1, 11: 2, 12: 4, 13: 5, 14: 8, 15: 9, 16: 3}
    pids = [pid for pid, n in counts.items() for _ in range(n)]
    return pids[::2] + pids[1::2]


def test_batches_are_p_distinct_identities_times_k() -> None:
    pids = _pids()
    sampler = IdentityBalancedSampler(pids, p=3, k=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == 12
        groups = [batch[i : i + 4] for i in range(0, 12, 4)]
        group_pids = [{pids[i] for i in g} for g in groups]
        assert all(len(g) == 1 for g in group_pids), "each K-group is one identity"
        assert len({next(iter(g)) for g in group_pids}) == 3, "identities in a batch are distinct"


def test_epoch_covers_every_identity_and_tracklet() -> None:
    pids = _pids()
    sampler = IdentityBalancedSampler(pids, p=3, k=4, seed=1)
    used = Counter(i for b in sampler for i in b)
    assert set(used) == set(range(len(pids)))
    assert {pids[i] for i in used} == set(pids)


def test_small_identity_sampled_with_replacement() -> None:
    pids = _pids()
    batches = list(IdentityBalancedSampler(pids, p=3, k=4, seed=2))
    lone = pids.index(10)
    assert any(b.count(lone) == 4 for b in batches)


def test_deterministic_by_seed_and_epoch() -> None:
    pids = _pids()
    a = IdentityBalancedSampler(pids, p=2, k=2, seed=7)
    b = IdentityBalancedSampler(pids, p=2, k=2, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(IdentityBalancedSampler(pids, p=2, k=2, seed=8)) != first


def test_too_few_identities() -> None:
    with pytest.raises(ValueError, match="at least p=4 identities"):
        IdentityBalancedSampler([1, 1, 2, 2, 3], p=4, k=2)


def test_ranks_split_each_global_batch_into_disjoint_whole_identities() -> None:
    pids = [i // 3 for i in range(3 * 13)]  # 13 identities, 3 tracklets each
    ranks = [IdentityBalancedSampler(pids, p=2, k=2, seed=5, rank=r, world_size=3) for r in range(3)]
    single = IdentityBalancedSampler(pids, p=6, k=2, seed=5)
    for sampler in (*ranks, single):
        sampler.set_epoch(1)
    per_rank = [list(s) for s in ranks]
    # Equal step counts on every rank: a collective never waits for a rank that has run out.
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(single)
    for step, whole in enumerate(single):
        shards = [b[step] for b in per_rank]
        assert sum(shards, []) == whole
        ids = [{pids[i] for i in shard} for shard in shards]
        assert all(len(s) == 2 for s in ids)
        assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_too_few_identities_for_all_ranks() -> None:
    with pytest.raises(ValueError, match=r"P=2 per rank x 3 ranks"):
        IdentityBalancedSampler([0, 0, 1, 1, 2, 2, 3, 3, 4, 4], p=2, k=2, rank=0, world_size=3)
