"""Slices of the per-query table: what a caption names, caption length, gallery counts, the worst slice."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from irra_core.data import synthetic
from irra_core.evaluation.slices import (
    Slice,
    attribute_slices,
    default_slices,
    gallery_count_slices,
    length_slices,
    slice_metrics,
    word_slices,
)

#: attribute keys of the generator's ``mentions`` behind each slice group
GROUP_KEYS = {"gender": "gender", "build": "build", "hair": "hair_length", "upper garment": "upper_type",
              "upper colour": "upper_colour", "lower garment": "lower_type", "lower colour": "lower_colour",
              "shoes": "shoes_colour", "bag": "bag", "hat": "hat"}


def test_attribute_slices_agree_with_what_the_generator_said():
    identities = synthetic.make_identities(40, seed=3)
    for n, ident in enumerate(identities):
        ident["id"] = n
    table = pd.DataFrame(identities).set_index("id")
    rng = np.random.default_rng(0)
    captions, pids, said = [], [], []
    for ident in identities:
        for _ in range(5):
            mentions: set[str] = set()
            captions.append(synthetic.make_caption(ident, rng, mentions))
            pids.append(ident["id"])
            said.append(mentions)
    slices = {s.name: s.mask for s in attribute_slices(captions, pids, table) if s.family == "attribute named"}
    checked = 0
    for group, key in GROUP_KEYS.items():
        truth = np.array([key in m for m in said])
        if group in slices:
            assert np.array_equal(slices[group], truth), group
            checked += 1
        else:
            assert not truth.any(), group
    assert checked >= 8
    accessory = np.array(["accessory" in m for m in said])
    worn = np.array([table.loc[p, "accessory"] for p in pids])
    assert np.array_equal(slices["glasses"] | slices.get("scarf", np.zeros_like(accessory)), accessory)
    assert not slices["glasses"][worn != "glasses"].any()
    counts = [s for s in attribute_slices(captions, pids, table) if s.family == "attributes named (count)"]
    assert sum(s.mask.sum() for s in counts) == len(captions)
    with pytest.raises(ValueError, match="another dataset"):
        attribute_slices(captions, [999] * len(captions), table)


def test_length_gallery_and_word_slices():
    captions = ["a man in a red shirt", "a woman in blue jeans and a black jacket walking", "person",
                "a lady with a red handbag and white sneakers"]
    lengths = length_slices(captions)
    assert sum(s.mask.sum() for s in lengths) == 4 and all(s.name.endswith("words") for s in lengths)
    counts = {s.name: s.mask.tolist() for s in gallery_count_slices([1, 2, 2, 3], [1, 1, 2, 3, 3, 3])}
    assert counts == {"1 image": [False, True, True, False], "2 images": [True, False, False, False],
                      "3 images": [False, False, False, True]}
    words = {(s.family, s.name): s.mask.tolist() for s in word_slices(captions)}
    assert words[("colour named", "red")] == [True, False, False, True]
    assert words[("garment named", "top")] == [True, False, False, False]  # "shirt", not "t-shirt" parts
    assert words[("garment named", "trousers")] == [False, True, False, False]
    assert ("colour named", "green") not in words


def test_slice_metrics_marks_the_worst_slice():
    queries = pd.DataFrame({"query_index": range(6), "pid": [0, 0, 1, 1, 2, 2],
                            "caption": ["red coat"] * 2 + ["blue coat"] * 2 + ["black bag"] * 2,
                            "first_hit_rank": [1, 1, 1, 3, 20, 20], "AP": [1, 1, 1, 0.3, 0.05, 0.05],
                            "INP": [1, 1, 1, 0.3, 0.05, 0.05]})
    slices = [Slice("colour", "red", np.array([1, 1, 0, 0, 0, 0], bool)),
              Slice("colour", "blue", np.array([0, 0, 1, 1, 0, 0], bool)),
              Slice("colour", "black", np.array([0, 0, 0, 0, 1, 1], bool))]
    frame = slice_metrics(queries, slices, n_resamples=100, min_queries=2)
    assert frame.iloc[0]["family"] == "all" and frame.iloc[0]["R1"] == pytest.approx(50.0)
    assert frame.loc[frame["worst"], "slice"].tolist() == ["black"]
    blue = frame[frame["slice"] == "blue"].iloc[0]
    assert blue["R1"] == 50.0 and blue["queries"] == 2 and blue["identities"] == 1
    assert blue["R1_low"] == blue["R1_high"] == 50.0  # one identity: resampling cannot move it
    assert not slice_metrics(queries, slices, n_resamples=10, min_queries=3)["worst"].any()
    everything = default_slices(queries, [0, 1, 2, 2])
    assert {s.family for s in everything} >= {"caption length", "colour named", "gallery images of the identity"}
