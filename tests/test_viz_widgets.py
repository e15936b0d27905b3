"""The explorers built and updated headless: state changes, static render, ipywidgets box."""
from __future__ import annotations

import matplotlib.colors as mcolors
import numpy as np
import pytest
import torch
from PIL import Image

from irra_core.viz import retrieval as R
from irra_core.viz import widgets as W
from irra_core.viz.inspect import InspectRun


class _Model(torch.nn.Module):
    def encode_text(self, ids):
        return torch.nn.functional.one_hot((ids != 0).sum(1) % 3, 3).float()


def _run(tmp_path, name="a", flip=False):
    paths = []
    for i in range(6):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((20, 10, 3), 40 * i, dtype=np.uint8)).save(p)
        paths.append(str(p))
    split = {"image_pids": [0, 0, 1, 1, 2, 2], "img_paths": paths, "caption_pids": [0, 1, 2],
             "captions": ["a man", "a woman in red", "a child"]}
    g = torch.eye(3).repeat_interleave(2, 0) + 0.01 * torch.arange(6)[:, None]
    q = torch.eye(3)[[2, 0, 1]] if flip else torch.eye(3)
    return InspectRun(name=name, model=_Model(), split=split, img_size=(16, 8), text_length=16,
                      gallery_feats=g, query_feats=q)


def _frames(fig):
    return [mcolors.to_hex(ax.spines["left"].get_edgecolor()) for ax in fig.axes]


def test_retrieval_explorer_updates(tmp_path):
    pytest.importorskip("irra_core.evaluation").rank_per_query
    ex = W.RetrievalExplorer({"good": _run(tmp_path), "bad": _run(tmp_path, "bad", flip=True)}, top_k=3)
    fig = ex.render()
    assert len(fig.axes) == 4
    assert fig.axes[1].get_images()[0].get_array().shape == (16, 8, 3)
    assert _frames(fig)[1:3] == [R.CORRECT_COLOR] * 2
    ex.select_checkpoint("bad")
    assert _frames(ex.render())[1:3] == [R.WRONG_COLOR] * 2
    ex.select_query(2)
    assert "query 2 (pid 2)" in ex.render()._suptitle.get_text()
    with pytest.raises(IndexError):
        ex.select_query(9)
    with pytest.raises(KeyError, match="good"):
        ex.select_checkpoint("nope")


def test_retrieval_explorer_free_text_and_widget(tmp_path):
    data = pytest.importorskip("irra_core.data")
    if not hasattr(data, "tokenize"):
        pytest.skip("irra_core.data.tokenize not available yet")
    pytest.importorskip("ipywidgets")
    ex = W.RetrievalExplorer(_run(tmp_path), top_k=4)
    box = ex.widget()
    assert len(box.children) == 3
    ex.search("a person")
    fig = ex.render()
    assert _frames(fig)[1:5] == [R.NEUTRAL_COLOR] * 4  # no identity for free text
    assert "free text" in fig._suptitle.get_text()
    with pytest.raises(ValueError):
        ex.search("   ")


def test_routing_explorer_with_stubbed_capture(tmp_path, monkeypatch):
    import irra_core.viz.inspect as I

    calls = []

    def fake_image(run, index, layer):
        calls.append(("image", index, layer))
        return torch.tensor([index % 4] * 8), torch.ones(8), (4, 2), 4

    def fake_caption(run, caption, layer):
        calls.append(("text", caption, layer))
        words = caption.split()
        return words, torch.arange(len(words)) % 4, torch.ones(len(words)), 4

    monkeypatch.setattr(I, "image_expert_map", fake_image)
    monkeypatch.setattr(I, "caption_expert_map", fake_caption)
    ex = W.RoutingExplorer(_run(tmp_path), image_index=1, layer=0)
    ex.select_image(3)
    ex.set_caption("a tall man")
    ex.select_layer(1)
    fig = ex.render()
    assert calls[-2:] == [("image", 3, 1), ("text", "a tall man", 1)]
    assert [t.get_text() for t in fig.axes[1].texts] == ["a", "tall", "man"]
    patch = fig.axes[0].get_images()[1].get_array()
    assert tuple(patch[0, 0, :3]) == pytest.approx(__import__("irra_core.viz.routing").viz.routing.expert_colors(4)[3][:3])
    with pytest.raises(IndexError):
        ex.select_image(99)


def test_routing_explorer_coverage_bars(tmp_path, monkeypatch):
    import irra_core.viz.inspect as I

    monkeypatch.setattr(I, "image_expert_map", lambda run, i, l: (torch.tensor([0, 0, 0, 1, 1, 1, 1, 1]),
                                                                  torch.ones(8), (4, 2), 4))
    monkeypatch.setattr(I, "caption_expert_map", lambda run, c, l: (["a", "b"], torch.tensor([3, 3]), torch.ones(2), 4))
    fig = W.RoutingExplorer(_run(tmp_path)).render()
    widths = [round(p.get_width(), 3) for p in fig.axes[2].patches]
    assert widths == [0.375, 0.625, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]  # image: 3/8 e0, 5/8 e1; caption: all e3


def test_routing_explorer_widget_drives_updates(tmp_path, monkeypatch):
    pytest.importorskip("ipywidgets")
    import irra_core.viz.inspect as I

    monkeypatch.setattr(I, "image_expert_map", lambda run, i, l: (torch.full((8,), i % 4), torch.ones(8), (4, 2), 4))
    monkeypatch.setattr(I, "caption_expert_map", lambda run, c, l: (c.split(), torch.zeros(len(c.split()), dtype=torch.long),
                                                                   torch.ones(len(c.split())), 4))
    ex = W.RoutingExplorer(_run(tmp_path))
    rendered = []
    original = ex.render
    monkeypatch.setattr(ex, "render", lambda: rendered.append((ex.image_index, ex.layer)) or original())
    box = ex.widget(num_layers=2)
    image_box, layer_box = box.children[0].children
    image_box.value = 4  # the control calls select_image
    layer_box.value = 1
    assert (ex.image_index, ex.layer) == (4, 1)
    assert rendered == [(0, 0), (4, 0), (4, 1)]  # drawn once on creation, then on every change
