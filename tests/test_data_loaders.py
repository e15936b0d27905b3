"""Loaders: train dict batches, eval order / shuffle permutation, seeded reproducibility."""
from __future__ import annotations

import pytest
import torch

from irra_core.config import load_config
from irra_core.data import build_eval_loaders, build_train_loader, prepare_dataset


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return load_config(None, {"data.root": str(tmp_path_factory.mktemp("loaders")), "data.synthetic_identities": 15,
                              "data.synthetic_images_per_id": 2, "data.img_size": [32, 16], "data.batch_size": 8,
                              "data.test_batch_size": 5, "data.text_length": 24, "data.mlm": True})


def test_train_batches(cfg):
    ds = prepare_dataset(cfg)
    loader = build_train_loader(cfg, ds, seed=4)
    batch = next(iter(loader))
    assert set(batch) == {"pids", "image_ids", "images", "caption_ids", "mlm_ids", "mlm_labels"}
    assert batch["images"].shape == (8, 3, 32, 16) and batch["images"].dtype == torch.float32
    for key in ("pids", "image_ids", "caption_ids", "mlm_ids", "mlm_labels"):
        assert batch[key].dtype == torch.long
    assert batch["caption_ids"].shape == batch["mlm_ids"].shape == (8, 24)
    assert hasattr(loader.sampler, "set_epoch")


def test_train_loader_reproducible_per_epoch(cfg):
    ds = prepare_dataset(cfg)
    a, b = build_train_loader(cfg, ds, seed=4), build_train_loader(cfg, ds, seed=4)
    for loader in (a, b):
        loader.sampler.set_epoch(3)
    ba, bb = next(iter(a)), next(iter(b))
    assert torch.equal(ba["pids"], bb["pids"]) and torch.equal(ba["mlm_ids"], bb["mlm_ids"])


def test_identity_sampler_loader(cfg):
    from dataclasses import replace

    ds = prepare_dataset(cfg)
    c = replace(cfg, data=replace(cfg.data, sampler="identity", num_instance=2, mlm=False))
    batch = next(iter(build_train_loader(c, ds)))
    counts = torch.unique(batch["pids"], return_counts=True)[1]
    assert (counts == 2).all() and "mlm_ids" not in batch


def test_eval_loaders_order_and_shuffle(cfg):
    ds = prepare_dataset(cfg)
    gallery, query = build_eval_loaders(cfg, "test", dataset=ds)
    g_pids = torch.cat([p for p, _ in gallery])
    q_batches = list(query)
    assert g_pids.tolist() == ds.test["image_pids"]
    assert torch.cat([p for p, _ in q_batches]).tolist() == ds.test["caption_pids"]
    assert q_batches[0][1].shape == (5, 24) and next(iter(gallery))[1].shape == (5, 3, 32, 16)
    sg, sq = build_eval_loaders(cfg, "test", dataset=ds, shuffle=True, seed=1, batch_size=64)
    order = sg.dataset.order
    assert sorted(order.tolist()) == list(range(len(g_pids))) and order.tolist() != sorted(order.tolist())
    shuffled = next(iter(sg))
    assert shuffled[0].tolist() == [ds.test["image_pids"][i] for i in order]
    _, images = next(iter(build_eval_loaders(cfg, "test", dataset=ds, batch_size=64)[0]))
    assert torch.equal(shuffled[1][0], images[order[0]])  # un-permutable via .order
    assert sq.dataset.order.tolist() != list(range(len(sq.dataset)))


def test_eval_loader_default_prepares_dataset(cfg):
    gallery, query = build_eval_loaders(cfg, "val")
    assert len(gallery.dataset) > 0 and len(query.dataset) == 2 * len(gallery.dataset)
    with pytest.raises(ValueError, match="split"):
        build_eval_loaders(cfg, "train")


def test_mlm_masks_independent_of_worker_count(cfg):
    from dataclasses import replace

    ds = prepare_dataset(cfg)
    out = []
    for workers in (0, 2):
        c = replace(cfg, data=replace(cfg.data, num_workers=workers))
        loader = build_train_loader(c, ds, seed=9)
        loader.sampler.set_epoch(1)
        out.append([(b["pids"], b["mlm_ids"], b["caption_ids"]) for b in loader])
    for (p0, m0, c0), (p1, m1, c1) in zip(*out):
        assert torch.equal(p0, p1) and torch.equal(m0, m1) and torch.equal(c0, c1)
