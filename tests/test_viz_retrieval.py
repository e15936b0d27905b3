"""Retrieval galleries on synthetic tables: frames follow correctness, worst-query order, free-text ranking."""
from __future__ import annotations

import json

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest
import torch

from irra_core.viz import retrieval as R


def _image(i: int) -> np.ndarray:
    return np.full((16, 8, 3), (i % 7) / 7.0)


def _table():
    # gallery of 6 images: pids 0 0 1 1 2 2
    return pd.DataFrame([
        {"query_index": 0, "pid": 0, "caption": "a man in a red coat", "first_hit_rank": 1, "AP": 1.0, "INP": 1.0,
         "top10_indices": json.dumps([0, 1, 2]), "top10_scores": json.dumps([0.9, 0.8, 0.1])},
        {"query_index": 1, "pid": 2, "caption": "a woman with a bag", "first_hit_rank": 3, "AP": 0.4, "INP": 0.33,
         "top10_indices": "2 3 4", "top10_scores": "0.7 0.6 0.5"},
        {"query_index": 2, "pid": 1, "caption": "someone", "first_hit_rank": 3, "AP": 0.2, "INP": 0.33,
         "top10_indices": "[0, 4, 3]", "top10_scores": "[0.3, 0.2, 0.1]"},
    ])


def test_gallery_frames_match_identity():
    pids = [0, 0, 1, 1, 2, 2]
    fig = R.plot_topk_gallery(_table(), _image, pids, top_k=3, n_gt=1)
    axes = fig.axes
    assert len(axes) == 3 * 4
    green, red, blue = (mcolors.to_rgba(c) for c in (R.CORRECT_COLOR, R.WRONG_COLOR, R.GT_COLOR))
    expected = [[blue, green, green, red], [blue, red, red, green], [blue, red, red, green]]
    for row in range(3):
        for col in range(4):
            ax = axes[row * 4 + col]
            assert mcolors.to_rgba(ax.spines["left"].get_edgecolor()) == expected[row][col], (row, col)
            assert ax.get_images()[0].get_array().shape == (16, 8, 3)
    assert axes[1].get_title().startswith("#1") and "0.900" in axes[1].get_title()


def test_read_queries_and_worst(tmp_path):
    path = tmp_path / "queries.csv"
    _table().to_csv(path, index=False)
    table = R.read_queries(path)
    assert table["top10_indices"].iloc[1] == [2, 3, 4]
    assert table["top10_scores"].iloc[2] == pytest.approx([0.3, 0.2, 0.1])
    worst = R.worst_queries(table, 2)
    assert list(worst["query_index"]) == [2, 1]  # same rank 3: lower AP first
    bad = _table().drop(columns=["INP"])
    bad.to_csv(path, index=False)
    with pytest.raises(ValueError, match="INP"):
        R.read_queries(path)


def test_rank_gallery_orders_and_ties():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.7, 0.7]])
    idx, scores = R.rank_gallery(torch.tensor([[2.0, 0.0]]), g, top_k=3)
    assert idx.tolist() == [[0, 2, 3]]  # tie between 0 and 2 keeps gallery order
    assert scores[0, 0].item() == pytest.approx(1.0)
    assert scores[0, 2].item() == pytest.approx(0.7071, abs=1e-3)


class _FakeTextModel(torch.nn.Module):
    """encode_text returns a one-hot on the number of non-zero tokens mod 3: enough to check the wiring."""

    def encode_text(self, ids):
        n = (ids != 0).sum(1) % 3
        return torch.nn.functional.one_hot(n, 3).float()


def test_rank_free_text_uses_tokenizer():
    data = pytest.importorskip("irra_core.data")
    if not hasattr(data, "tokenize"):
        pytest.skip("irra_core.data.tokenize not available yet")
    gallery = torch.eye(3)
    model = _FakeTextModel().train()
    idx, scores = R.rank_free_text(model, "a man", gallery, top_k=2, context_length=16)
    assert idx.shape == (1, 2) and scores[0, 0].item() == pytest.approx(1.0)
    assert model.training  # restored
    with pytest.raises(ValueError, match="empty"):
        R.rank_free_text(model, "  ", gallery)


def test_first_hit_histogram_title():
    fig = R.plot_first_hit_ranks(_table())
    assert "R1 = 33.3%" in fig.axes[0].get_title()
