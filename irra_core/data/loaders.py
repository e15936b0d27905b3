"""DataLoaders for training (dict batches) and evaluation (gallery / query), seeded end to end."""
from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from irra_core.data.datasets import ImageDataset, TextDataset, TrainDataset
from irra_core.data.images import find_unreadable
from irra_core.data.errors import DatasetError
from irra_core.data.parsers import PedesDataset
from irra_core.data.samplers import IdentitySampler, RandomSampler
from irra_core.data.transforms import build_transforms


def seed_worker(worker_id: int) -> None:
    """Seed Python and NumPy in a DataLoader worker from the seed torch gave it (which the
    loader's generator derives per epoch), so augmentations are reproducible."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _skip_bad(cfg: Any, paths: list[str], where: str) -> dict[str, str]:
    if not cfg.data.skip_bad_images:
        return {}
    bad = find_unreadable(paths)
    if bad:
        listing = "; ".join(f"{p} ({why})" for p, why in list(bad.items())[:10])
        warnings.warn(f"data.skip_bad_images: skipped {len(bad)} unreadable image(s) in {where}: {listing}"
                      + (" ..." if len(bad) > 10 else ""), stacklevel=3)
    return bad


def build_train_loader(cfg: Any, dataset: PedesDataset, *, rank: int = 0, world_size: int = 1,
                       seed: int | None = None, epoch_seed: int | None = None) -> DataLoader:
    """Training loader yielding dicts ``pids (B,)``, ``image_ids (B,)``, ``images (B, 3, H, W)``,
    ``caption_ids (B, L)`` and, when ``cfg.data.mlm``, ``mlm_ids (B, L)``, ``mlm_labels (B, L)``.

    ``cfg.data.batch_size`` is per rank. ``loader.sampler.set_epoch(e)`` reseeds the order (and MLM
    masks) of epoch ``e``; ranks get disjoint shards of one global order. Skipped unreadable
    images (only with ``cfg.data.skip_bad_images``) are listed in ``loader.dataset.skipped``.

    Args:
        seed: base seed (default ``cfg.train.seed``); ``epoch_seed`` is an alias.
    """
    d = cfg.data
    seed = cfg.train.seed if seed is None and epoch_seed is None else (seed if seed is not None else epoch_seed)
    samples = dataset.train
    bad = _skip_bad(cfg, [s[2] for s in samples], f"{dataset.name} train")
    if bad:
        samples = [s for s in samples if s[2] not in bad]
    if not samples:
        raise DatasetError(f"{dataset.name} ({dataset.root}): the training split is empty")
    transform = build_transforms(d.img_size, is_train=True, img_aug=d.img_aug, erasing_fill=d.random_erasing_fill)
    train_set = TrainDataset(samples, transform, d.text_length, mlm=d.mlm,
                             mlm_shared_caption_bug=d.mlm_shared_caption_bug, seed=seed)
    train_set.skipped = bad
    if d.sampler == "identity":
        sampler = IdentitySampler(train_set.pids, d.batch_size, d.num_instance, seed, rank, world_size)
    else:
        sampler = RandomSampler(len(train_set), seed, rank, world_size)
    generator = torch.Generator().manual_seed(int(seed) * 1000 + rank)
    return DataLoader(train_set, batch_size=d.batch_size, sampler=sampler, num_workers=d.num_workers,
                      worker_init_fn=seed_worker, generator=generator, drop_last=False,
                      persistent_workers=False, pin_memory=False)


_PREPARED: dict[tuple, PedesDataset] = {}


def _dataset_for(cfg: Any) -> PedesDataset:
    from irra_core.data import prepare_dataset

    d = cfg.data
    key = (d.dataset, str(d.root), d.synthetic_format, d.synthetic_identities, d.synthetic_images_per_id,
           d.synthetic_test_images_per_id, d.synthetic_test_captions_per_image, d.synthetic_eval_identities,
           d.synthetic_seed, d.max_identities,
           d.val_from_train, d.val_from_train_seed)
    if key not in _PREPARED:
        _PREPARED[key] = prepare_dataset(cfg)
    return _PREPARED[key]


def build_eval_loaders(cfg: Any, split: str | dict = "test", *, batch_size: int | None = None,
                       shuffle: bool = False, seed: int = 0, dataset: PedesDataset | None = None
                       ) -> tuple[DataLoader, DataLoader]:
    """Gallery and query loaders of a split.

    Gallery batches are ``(pids (B,), images (B, 3, H, W))`` (test transform at
    ``cfg.data.img_size``); query batches ``(pids (B,), caption_ids (B, L))`` with
    ``L = cfg.data.text_length``. Order is the annotation order unless ``shuffle``, in which case
    ``loader.dataset.order[i]`` is the split index of the i-th item (to un-permute).

    Args:
        split: ``"val"`` | ``"test"`` or a split dict (``image_pids``, ``img_paths``,
            ``caption_pids``, ``captions``).
        batch_size: default ``cfg.data.test_batch_size``.
        dataset: the parsed dataset (default: ``prepare_dataset(cfg)``, cached per process).
    """
    d = cfg.data
    if isinstance(split, str):
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        ds = dataset if dataset is not None else _dataset_for(cfg)
        data = getattr(ds, split)
        where = f"{ds.name} {split}"
        if not data["img_paths"]:
            raise DatasetError(f"{where} split is empty ({ds.annotation_file}); "
                               f"ICFG-PEDES has no val split: hold training identities out with "
                               f"data.val_from_train=N, or evaluate the test split")
    else:
        data, where = split, "split"
    pids, paths = list(data["image_pids"]), list(data["img_paths"])
    bad = _skip_bad(cfg, paths, f"{where} gallery")
    if bad:
        keep = [i for i, p in enumerate(paths) if p not in bad]
        pids, paths = [pids[i] for i in keep], [paths[i] for i in keep]
    rng = np.random.default_rng([seed, 17])
    g_order = rng.permutation(len(pids)) if shuffle else None
    q_order = rng.permutation(len(data["caption_pids"])) if shuffle else None
    transform = build_transforms(d.img_size, is_train=False)
    gallery = ImageDataset(pids, paths, transform, order=g_order)
    gallery.skipped = bad  # type: ignore[attr-defined]
    query = TextDataset(data["caption_pids"], data["captions"], d.text_length, order=q_order)
    bs = batch_size or d.test_batch_size
    common = dict(batch_size=bs, shuffle=False, num_workers=d.num_workers, worker_init_fn=seed_worker)
    return DataLoader(gallery, **common), DataLoader(query, **common)
