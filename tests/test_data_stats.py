"""Summary tables of a parsed dataset."""
from __future__ import annotations

import pytest

from irra_core.data import build_dataset
from irra_core.data.stats import caption_lengths, images_per_identity, split_summary, truncation_summary
from irra_core.data.synthetic import make_synthetic_pedes


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return build_dataset("CUHK-PEDES", make_synthetic_pedes(tmp_path_factory.mktemp("st") / "c", "CUHK-PEDES", 12, 3))


def test_split_summary_counts(ds):
    df = split_summary(ds)
    assert list(df.index) == ["train", "val", "test"]
    assert df.loc["train", "captions"] == len(ds.train)
    assert df.loc["test", "images"] == len(ds.test["img_paths"])
    assert df["images"].sum() * 2 == df["captions"].sum()


def test_caption_lengths_and_truncation(ds):
    df = caption_lengths(ds, context_length=20)
    assert len(df) == len(ds.train) + len(ds.val["captions"]) + len(ds.test["captions"])
    assert (df["truncated"] == (df["tokens"] > 20)).all()
    summary = truncation_summary(ds, 20)
    assert 0 < summary.loc["train", "truncation_rate"] <= 1
    assert truncation_summary(ds, 200)["truncation_rate"].eq(0).all()


def test_images_per_identity(ds):
    df = images_per_identity(ds)
    assert (df["images"] == 3).all() and (df["captions"] == 6).all()
