"""Training samplers (SPEC §1.8): random and identity P x K, both shardable across DDP ranks.

Every sampler yields ``(index, epoch)`` pairs, so the dataset can seed per-sample randomness
(MLM masks) from ``(seed, epoch, index)`` whatever the number of workers. The order of an epoch
is a pure function of ``(seed, epoch)``: all ranks compute the same global order and take
disjoint shards of it. ``set_epoch(e)`` fixes the next epoch; without it each new iteration
advances by one.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class _EpochSampler(Sampler):
    def __init__(self, seed: int, rank: int, world_size: int) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0
        self._next: int | None = 0

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next iteration (reseeds the order)."""
        self._next = int(epoch)

    def _begin(self) -> int:
        self.epoch = self._next if self._next is not None else self.epoch + 1
        self._next = None
        return self.epoch

    def _peek(self) -> int:
        return self._next if self._next is not None else self.epoch + 1

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's dataset indices for ``epoch``."""
        raise NotImplementedError

    def _indices(self, epoch: int) -> list[int]:
        # memoised: loops and progress bars call len() often, and the identity order costs O(N)
        if getattr(self, "_memo", (None,))[0] != epoch:
            self._memo = (epoch, self.epoch_indices(epoch))
        return self._memo[1]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self._begin()
        return iter([(i, epoch) for i in self._indices(epoch)])

    def __len__(self) -> int:
        return len(self._indices(self._peek()))


class RandomSampler(_EpochSampler):
    """A fresh permutation per epoch; with ``world_size`` > 1 each rank takes every
    ``world_size``-th index of the same permutation (the tail that does not divide is dropped, so
    shards are disjoint and equal)."""

    def __init__(self, num_samples: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(seed, rank, world_size)
        self.num_samples = int(num_samples)

    def epoch_indices(self, epoch: int) -> list[int]:
        order = np.random.default_rng([self.seed, epoch, 11]).permutation(self.num_samples)
        if self.world_size > 1:
            usable = len(order) - len(order) % self.world_size
            order = order[:usable][self.rank::self.world_size]
        return order.tolist()


class IdentitySampler(_EpochSampler):
    """IRRA's ``RandomIdentitySampler``: batches of P = batch_size / K identities x K samples.

    Per epoch each identity's samples are shuffled and cut into groups of K (identities with
    fewer than K samples are drawn with replacement up to K); batches take P random identities
    that still have groups; the epoch ends when fewer than P identities remain. With
    ``world_size`` > 1, whole batches are dealt round-robin to the ranks.
    """

    def __init__(self, pids: Sequence[int], batch_size: int, num_instance: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        super().__init__(seed, rank, world_size)
        if num_instance < 1 or batch_size % num_instance:
            raise ValueError(f"data.batch_size ({batch_size}) must be a multiple of data.num_instance "
                             f"({num_instance}) for the identity sampler")
        self.batch_size, self.num_instance = int(batch_size), int(num_instance)
        self.num_pids_per_batch = self.batch_size // self.num_instance
        self.index_dic: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            self.index_dic[int(pid)].append(index)
        self.pids = sorted(self.index_dic)
        if len(self.pids) < self.num_pids_per_batch:
            raise ValueError(f"identity sampler needs at least P = {self.num_pids_per_batch} identities, "
                             f"the training set has {len(self.pids)}; lower data.batch_size")

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` (before sharding), each ``batch_size`` indices."""
        rng = np.random.default_rng([self.seed, epoch, 13])
        groups: dict[int, list[list[int]]] = {}
        for pid in self.pids:
            idxs = np.asarray(self.index_dic[pid])
            if len(idxs) < self.num_instance:
                idxs = rng.choice(idxs, size=self.num_instance, replace=True)
            idxs = rng.permutation(idxs)
            full = len(idxs) - len(idxs) % self.num_instance
            groups[pid] = [idxs[i:i + self.num_instance].tolist() for i in range(0, full, self.num_instance)]
        available = [pid for pid in self.pids if groups[pid]]
        batches = []
        while len(available) >= self.num_pids_per_batch:
            chosen = rng.choice(len(available), size=self.num_pids_per_batch, replace=False)
            batch: list[int] = []
            for c in chosen.tolist():
                batch.extend(groups[available[c]].pop(0))
            batches.append(batch)
            available = [pid for pid in available if groups[pid]]
        return batches

    def epoch_indices(self, epoch: int) -> list[int]:
        batches = self.epoch_batches(epoch)
        if self.world_size > 1:
            usable = len(batches) - len(batches) % self.world_size
            batches = batches[:usable][self.rank::self.world_size]
        return [i for b in batches for i in b]
