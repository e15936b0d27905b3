"""Smaller or re-split views of a parsed dataset: the first identities of each split (smoke runs on real
data) and a validation split held out of the training identities (datasets without one, e.g. ICFG-PEDES).

Both rebuild the :class:`~irra_core.data.parsers.PedesDataset` from its annotation records, so the train
list, the val/test dicts and ``num_classes`` stay consistent; training pids are renumbered ``0..C-1`` in
ascending raw-id order (the ID classifier indexes them), val/test keep raw ids as IRRA does.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np

from irra_core.data.errors import DatasetError
from irra_core.data.parsers import PedesDataset, Record, build_from_records

__all__ = ["first_identities", "hold_out_identities"]


def _rebuild(dataset: PedesDataset, records: list[Record]) -> PedesDataset:
    train_ids = sorted({r.raw_id for r in records if r.split == "train"})
    rebuilt = build_from_records(dataset.name, dataset.root, dataset.annotation_file, records,
                                 train_pids={raw: pid for pid, raw in enumerate(train_ids)})
    return dataclasses.replace(rebuilt, subset=dataset.subset, val_from_train=dataset.val_from_train)


def first_identities(dataset: PedesDataset, max_identities: int) -> PedesDataset:
    """Keep the ``max_identities`` smallest raw ids of every split (``data.max_identities``).

    Args:
        dataset: a parsed dataset (with its ``records``).
        max_identities: identities kept per split; 0 keeps everything.

    Returns:
        The same dataset when nothing is cut, else a rebuilt one whose ``subset`` records
        ``{"max_identities": N, "identities": {split: kept}, "of": {split: total}}``.
    """
    if max_identities <= 0:
        return dataset
    ids: dict[str, list[int]] = defaultdict(list)
    for rec in dataset.records:
        ids[rec.split].append(rec.raw_id)
    totals = {split: len(set(v)) for split, v in ids.items()}
    if all(n <= max_identities for n in totals.values()):
        return dataset
    keep = {split: set(sorted(set(v))[:max_identities]) for split, v in ids.items()}
    records = [r for r in dataset.records if r.raw_id in keep[r.split]]
    out = _rebuild(dataset, records)
    out.subset = {"max_identities": max_identities, "identities": {s: len(k) for s, k in keep.items()},
                  "of": totals}
    return out


def hold_out_identities(dataset: PedesDataset, identities: int, seed: int = 0) -> PedesDataset:
    """Move ``identities`` training identities (all their images and captions) into the val split.

    For datasets published without a validation split (ICFG-PEDES), so that model selection never looks
    at the test split (``data.val_from_train``). The choice is a function of ``seed`` and the training ids
    alone (``numpy.random.default_rng(seed)`` over the sorted raw ids), so every run on the same data and
    seed holds out the same people.

    Returns:
        A rebuilt dataset whose ``val_from_train`` is ``{"identities", "seed", "raw_ids", "images",
        "captions", "dataset", "annotation_file"}`` (what the run folder's ``val_from_train.json`` holds).

    Raises:
        DatasetError: the dataset already has a val split, or has too few training identities to keep
            at least one for training.
    """
    if identities <= 0:
        return dataset
    if dataset.val["img_paths"]:
        raise DatasetError(f"{dataset.name} ({dataset.annotation_file}) already has a val split of "
                           f"{len(set(dataset.val['image_pids']))} identities; data.val_from_train is for datasets "
                           f"without one (ICFG-PEDES): set data.val_from_train=0")
    train_ids = sorted({r.raw_id for r in dataset.records if r.split == "train"})
    if identities >= len(train_ids):
        raise DatasetError(f"data.val_from_train={identities} but {dataset.name} has only {len(train_ids)} "
                           f"training identities; hold out fewer (e.g. {max(1, len(train_ids) // 10)})")
    rng = np.random.default_rng(seed)
    held = sorted(int(i) for i in rng.choice(train_ids, size=identities, replace=False))
    chosen = set(held)
    records = [dataclasses.replace(r, split="val") if r.split == "train" and r.raw_id in chosen else r
               for r in dataset.records]
    out = _rebuild(dataset, records)
    out.val_from_train = {"dataset": dataset.name, "annotation_file": str(dataset.annotation_file),
                          "identities": identities, "seed": seed, "raw_ids": held,
                          "images": len(out.val["img_paths"]), "captions": len(out.val["captions"])}
    return out
