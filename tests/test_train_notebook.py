"""The training notebooks' helpers: the one-batch walkthrough, the SDM target figure, figure names."""
from __future__ import annotations

import pytest
import torch

from irra_core import losses
from irra_core.config import load_config
from irra_core.train_notebook import _figure_path, one_batch_walkthrough
from irra_core.viz.method import plot_sdm_targets


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def _cfg(preset: str, data_root):
    return load_config(preset, {"data.root": str(data_root)}, smoke=True)


def _row(shapes, tensor: str) -> str:
    (shape,) = shapes.loc[shapes["tensor"] == tensor, "shape"].tolist()
    return shape


def _kl(logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    log_p = logits.log_softmax(dim=1)
    return (log_p.exp() * (log_p - torch.log(q + 1e-8))).sum(dim=1).mean()


@pytest.mark.parametrize("preset", ["irra-cpu", "php-cpu"])
def test_walkthrough_shapes_and_logits_are_the_models(preset, data_root):
    cfg = _cfg(preset, data_root)
    walk = one_batch_walkthrough(cfg)
    batch, (height, width) = cfg.data.batch_size, cfg.data.img_size
    shapes = walk.shapes
    assert list(shapes.columns) == ["step", "tensor", "symbol", "shape", "note"]
    assert _row(shapes, "images") == str((batch, 3, height, width))
    assert _row(shapes, "caption_ids") == str((batch, cfg.data.text_length))
    assert _row(shapes, "targets") == str((batch, batch)) and walk.logits.shape == (batch, batch)
    assert set(walk.losses) == {f"{name}_loss" for name in cfg.loss_names()}
    # the SDM loss the model computed in forward equals SDM recomputed from the walkthrough's logits (weight 1)
    q = losses.sdm_targets(walk.pids)
    from_logits = _kl(walk.logits, q) + _kl(walk.logits.t(), q.t())
    assert walk.losses["sdm_loss"] == pytest.approx(float(from_logits), rel=1e-4)
    m = cfg.model
    if m.arch == "php":
        assert _row(shapes, "image layer 0 gate logits") == str((batch, m.cnum, m.num_experts))
        assert _row(shapes, "text layer 0 top-k experts") == str((batch, m.cnum, m.topk))
        assert _row(shapes, "image unified tokens") == str((batch, m.cnum, m.embed_dim))
        patches = ((height - m.patch_size) // m.stride_size + 1) * ((width - m.patch_size) // m.stride_size + 1)
        assert _row(shapes, "image pooling weights") == str((batch, m.cnum, patches))
    else:
        masked = int(shapes.loc[shapes["tensor"] == "mlm_ids", "note"].item().split()[0])
        assert _row(shapes, "vocabulary logits at masked positions") == str((masked, m.vocab_size))
        assert _row(shapes, "image feature (CLS)") == str((batch, m.embed_dim))


def test_sdm_target_figure_draws_q_in_identity_order():
    pids = torch.tensor([4, 2, 4, 9, 2, 4])
    logits = torch.randn(6, 6, generator=torch.Generator().manual_seed(0))
    fig = plot_sdm_targets(pids, logits)
    q_image, p_image = (ax.images[0].get_array() for ax in fig.axes[:2])
    order = torch.tensor([1, 4, 0, 2, 5, 3])  # stable sort by pid: 2, 2, 4, 4, 4, 9
    torch.testing.assert_close(torch.as_tensor(q_image.data, dtype=torch.float32), losses.sdm_targets(pids[order]))
    expected_p = logits[order][:, order].softmax(dim=1)
    torch.testing.assert_close(torch.as_tensor(p_image.data, dtype=torch.float32), expected_p)
    assert len(plot_sdm_targets(pids).axes) == 2  # one panel and its colour bar
    with pytest.raises(ValueError, match=r"\(6, 6\)"):
        plot_sdm_targets(pids, logits[:5])
    with pytest.raises(ValueError, match="non-empty"):
        plot_sdm_targets(torch.zeros(2, 3))


def test_figure_names_follow_the_notebook_and_refuse_unknown_models(tmp_path):
    assert _figure_path(tmp_path, "php", "steps") == tmp_path / "figures" / "11_steps_php.png"
    with pytest.raises(ValueError, match="irra"):
        _figure_path(tmp_path, "clip", "steps")


def test_training_cells_tune_the_process_before_anything_large_is_built(monkeypatch):
    """The walkthrough allocates a whole model before fit(); allocator and flush-to-zero come first (runtime docstring)."""
    from irra_core import runtime, train_notebook

    events = []
    monkeypatch.setattr(runtime, "tune_cpu", lambda *a, **k: events.append("tune") or (True, True))

    def no_dataset(cfg, *a, **k):
        events.append("prepare_dataset")
        raise RuntimeError("stop here")

    import irra_core.data as data

    monkeypatch.setattr(data, "prepare_dataset", no_dataset)
    cfg = train_notebook.workbook_config("irra", "cpu", "synthetic", "data", {}, smoke=True, device="cpu", seed=1,
                                         interactive=False)
    with pytest.raises(RuntimeError, match="stop here"):
        train_notebook.one_batch_walkthrough(cfg)
    assert events == ["tune", "prepare_dataset"]
    events.clear()
    monkeypatch.setattr(train_notebook, "resolve_run_dir", lambda *a, **k: "run")
    monkeypatch.setattr(train_notebook, "workbook_config", lambda *a, **k: cfg)
    train_notebook.training_setup("irra", "", "cpu", "synthetic", "data", {}, smoke=True, device="cpu", seed=1,
                                  interactive=False)
    assert events == ["tune"]
