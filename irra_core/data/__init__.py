"""Data layer: dataset parsers, the synthetic generator, IRRA's tokenizer, transforms, MLM masking,
samplers, loaders, an integrity check and summary tables.

Public entry points::

    build_dataset(name, root)           prepare_dataset(cfg)
    tokenize(texts, context_length)     build_transforms(img_size, is_train, img_aug, erasing_fill)
    build_train_loader(cfg, dataset)    build_eval_loaders(cfg, split)
    check_dataset(name, root)           make_synthetic_pedes(root, fmt, ...)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from irra_core.data.errors import DatasetError, ImageReadError
from irra_core.data.parsers import PedesDataset, build_dataset, canonical_name

__all__ = [
    "DatasetError", "ImageReadError", "PedesDataset", "build_dataset", "canonical_name", "prepare_dataset",
    "tokenize", "build_transforms", "build_train_loader", "build_eval_loaders", "check_dataset",
    "make_synthetic_pedes", "mask_tokens",
]


def prepare_dataset(cfg: Any) -> PedesDataset:
    """The dataset named by ``cfg.data``: generated (idempotently) when ``dataset == "synthetic"``.

    The synthetic set lives in ``<cfg.data.root>/synthetic/<fmt>-n<ids>-k<imgs>-s<seed>`` and is
    parsed by the real parser of ``cfg.data.synthetic_format``. Then ``data.max_identities`` keeps the
    first identities of each split (:func:`~irra_core.data.subsets.first_identities`) and
    ``data.val_from_train`` holds training identities out as the val split
    (:func:`~irra_core.data.subsets.hold_out_identities`).

    Raises:
        DatasetError: the dataset is missing or malformed, or image files it lists are missing (one
            message grouping them by folder; not with ``data.skip_bad_images``, which skips them).
    """
    from irra_core.data.images import check_images_exist
    from irra_core.data.subsets import first_identities, hold_out_identities

    data = cfg.data
    if data.dataset == "synthetic":
        from irra_core.data.synthetic import make_synthetic_pedes, synthetic_dir

        extra = {"test_images_per_id": data.synthetic_test_images_per_id or None,
                 "eval_identities": data.synthetic_eval_identities or None,
                 "test_captions_per_image": data.synthetic_test_captions_per_image or None}
        folder = synthetic_dir(data.root, data.synthetic_format, data.synthetic_identities,
                               data.synthetic_images_per_id, data.synthetic_seed, **extra)
        make_synthetic_pedes(folder, data.synthetic_format, data.synthetic_identities,
                             data.synthetic_images_per_id, data.synthetic_seed, **extra)
        dataset = build_dataset(data.synthetic_format, folder)
    else:
        dataset = build_dataset(data.dataset, Path(data.root))
    dataset = first_identities(dataset, getattr(data, "max_identities", 0))
    dataset = hold_out_identities(dataset, getattr(data, "val_from_train", 0), getattr(data, "val_from_train_seed", 0))
    if not data.skip_bad_images:
        check_images_exist([str(r.img_path) for r in dataset.records], dataset.root / "imgs",
                           f"{dataset.name} ({dataset.root})")
    return dataset


def __getattr__(name: str) -> Any:
    # torch-dependent pieces are imported on first use, so the `check` CLI starts without torch
    if name == "tokenize":
        from irra_core.data.tokenizer import tokenize

        return tokenize
    if name == "build_transforms":
        from irra_core.data.transforms import build_transforms

        return build_transforms
    if name in ("build_train_loader", "build_eval_loaders"):
        from irra_core.data import loaders

        return getattr(loaders, name)
    if name == "check_dataset":
        from irra_core.data.integrity import check_dataset

        return check_dataset
    if name == "make_synthetic_pedes":
        from irra_core.data.synthetic import make_synthetic_pedes

        return make_synthetic_pedes
    if name == "mask_tokens":
        from irra_core.data.mlm import mask_tokens

        return mask_tokens
    raise AttributeError(f"module 'irra_core.data' has no attribute {name!r}")
