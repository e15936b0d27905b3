"""Dataset figures and the theme: each plot function returns the Figure it drew, with what it claims."""
from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from irra_core.viz import data_plots, save_figure, set_theme


def test_plot_samples_draws_each_image_with_its_captions():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 16, 3), dtype=np.uint8) for _ in range(5)]
    captions = [["a man in a red coat", "he carries a bag"]] + [f"caption {i}" for i in range(1, 5)]
    fig = data_plots.plot_samples(images, captions, [f"pid {i}" for i in range(5)], ncols=3)
    assert isinstance(fig, Figure)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 5 and len(fig.axes) == 6  # 2 rows x 3, the last tile empty
    np.testing.assert_array_equal(shown[0].images[0].get_array(), images[0])
    texts = " ".join(t.get_text() for t in shown[0].texts)
    assert "red coat" in texts and "carries a bag" in texts and shown[0].get_title() == "pid 0"
    with pytest.raises(ValueError, match="must match"):
        data_plots.plot_samples(images, captions[:2])


def test_truncation_rate_and_caption_length_plot():
    lengths = [10, 12, 12, 40, 41, 50, 8, 9]
    assert data_plots.truncation_rate(lengths, 40) == pytest.approx(2 / 8)
    assert data_plots.truncation_rate([], 40) == 0.0
    fig = data_plots.plot_caption_lengths(lengths, text_length=40, hue=["train"] * 4 + ["test"] * 4)
    ax = fig.axes[0]
    assert any(np.allclose(line.get_xdata(), 40.5) for line in ax.lines)
    assert any("25.0% truncated" in t.get_text() for t in ax.texts)
    heights = sum(p.get_height() for p in ax.patches)
    assert heights == len(lengths)  # stacked bars: every caption counted once


def test_plot_functions_draw_into_a_given_axes():
    fig = Figure()
    ax = fig.add_subplot()
    assert data_plots.plot_caption_lengths([3, 4, 5], ax=ax) is fig


def test_images_per_identity_counts_identities_per_split():
    table = pd.DataFrame({"split": ["train", "train", "train", "test"], "pid": [0, 1, 2, 7],
                          "images": [2, 3, 1, 2], "captions": [4, 6, 2, 4]})
    fig = data_plots.plot_images_per_identity(table)
    bars = [p.get_height() for p in fig.axes[0].patches if p.get_height() > 0]
    assert sorted(bars) == [1, 1, 1, 1]  # train: ids with 1, 2 and 3 images; test: one id with 2
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "2", "3"]
    assert "4 identities, 8 images" in fig.axes[0].get_title()
    fig = data_plots.plot_images_per_identity(table.drop(columns="split"), column="captions")
    assert sorted(p.get_height() for p in fig.axes[0].patches if p.get_height() > 0) == [1, 1, 2]
    with pytest.raises(ValueError, match="not in the table"):
        data_plots.plot_images_per_identity(table, column="views")


def test_split_summary_and_attribute_counts():
    table = pd.DataFrame({"identities": [6, 2], "images": [24, 8], "captions": [48, 16]}, index=["train", "test"])
    fig = data_plots.plot_split_summary(table)
    heights = sorted(p.get_height() for p in fig.axes[0].patches if p.get_height() > 0)
    assert heights == [2, 6, 8, 16, 24, 48]
    attrs = pd.DataFrame({"gender": ["man", "woman", "man", "man"], "bag": ["none", "backpack", "none", "none"],
                          "id": [1, 2, 3, 4], "split": ["train", "train", "test", "test"]})
    fig = data_plots.plot_attribute_counts(attrs, ncols=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["gender", "bag"]  # numeric and hue columns are not attributes
    man_bars = sum(p.get_width() for p in fig.axes[0].patches)
    assert man_bars == 4  # horizontal bars: one identity each
    with pytest.raises(ValueError, match="not in the table"):
        data_plots.plot_attribute_counts(attrs, ["colour"])


def test_word_counts_skip_stop_words():
    counts = data_plots.word_counts(["A man wearing a red T-shirt.", "The man has red hair and a t-shirt"])
    assert counts["red"] == 2 and counts["t-shirt"] == 2 and "a" not in counts and "man" not in counts
    fig = data_plots.plot_top_words(["red red blue", "blue green red"], top=2)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["blue", "red"]  # bottom-up: most frequent on top


def test_save_figure_writes_png_atomically(tmp_path):
    fig = data_plots.plot_caption_lengths([3, 4, 5])
    path = save_figure(fig, tmp_path / "figures" / "lengths.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["lengths.png"]  # no temporary file left
    with pytest.raises(ValueError, match="PNG"):
        save_figure(fig, tmp_path / "lengths.pdf")


def test_set_theme_is_explicit():
    with matplotlib.rc_context():
        before = matplotlib.rcParams["axes.titleweight"]
        import irra_core.viz  # noqa: F401  importing changes nothing
        assert matplotlib.rcParams["axes.titleweight"] == before
        set_theme()
        assert matplotlib.rcParams["axes.titleweight"] == "bold"
