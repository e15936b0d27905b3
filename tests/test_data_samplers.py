"""Samplers: identity P x K, per-epoch reseeding, disjoint DDP shards."""
from __future__ import annotations

from collections import Counter

import pytest

from irra_core.data.samplers import IdentitySampler, RandomSampler

PIDS = [p for p in range(30) for _ in range(2 + p % 5)]  # 2..6 samples per identity


def test_identity_batches_are_p_by_k():
    s = IdentitySampler(PIDS, batch_size=8, num_instance=2, seed=0)
    batches = s.epoch_batches(0)
    assert batches
    for b in batches:
        assert len(b) == 8
        counts = Counter(PIDS[i] for i in b)
        assert len(counts) == 4 and set(counts.values()) == {2}
    assert len(s) == 8 * len(batches)


def test_identity_with_few_samples_drawn_with_replacement():
    pids = [0, 1, 1, 1, 1, 2, 2, 2, 2]
    batches = IdentitySampler(pids, batch_size=8, num_instance=4, seed=0).epoch_batches(0)
    assert any(Counter(pids[i] for i in b)[0] == 4 for b in batches)  # identity 0 has one sample


def test_set_epoch_reseeds_and_auto_advances():
    s = RandomSampler(50, seed=1)
    first = [i for i, _ in s]
    second = [i for i, _ in s]
    assert sorted(first) == list(range(50)) and first != second
    s.set_epoch(0)
    assert [i for i, _ in s] == first
    s.set_epoch(5)
    assert {e for _, e in s} == {5}


@pytest.mark.parametrize("kind", ["random", "identity"])
def test_distributed_shards_disjoint_and_cover(kind):
    def make(rank):
        if kind == "random":
            return RandomSampler(len(PIDS), seed=3, rank=rank, world_size=3)
        return IdentitySampler(PIDS, 8, 2, seed=3, rank=rank, world_size=3)

    shards = []
    for rank in range(3):
        s = make(rank)
        s.set_epoch(2)
        shards.append([i for i, _ in s])
    assert len({len(x) for x in shards}) == 1
    if kind == "random":
        assert set.intersection(*map(set, shards)) == set()
        assert sum(map(len, shards)) == len(PIDS) - len(PIDS) % 3
    else:
        batches = IdentitySampler(PIDS, 8, 2, seed=3).epoch_batches(2)
        assert shards[1][:8] == batches[1] and shards[2][:8] == batches[2]


def test_identity_sampler_config_errors():
    with pytest.raises(ValueError, match="num_instance"):
        IdentitySampler(PIDS, 10, 4)
    with pytest.raises(ValueError, match="batch_size"):
        IdentitySampler([0, 1], 8, 2)
