"""Part boxes of the synthetic generator (regions.json) and the pointing game that scores attention with them."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from irra_core.data.synthetic import PALETTE, REGIONS, load_regions, make_synthetic_pedes, render_person
from irra_core.viz.attention import attribute_words, cells_in_box, pointing_game, score_pointing

PERSON = {"gender": "woman", "build": "heavy", "hair_colour": "black", "hair_length": "short",
          "upper_type": "coat", "upper_colour": "red", "lower_type": "trousers", "lower_colour": "blue",
          "shoes_colour": "white", "bag": "handbag", "bag_colour": "yellow", "hat": "none", "hat_colour": "black",
          "accessory": "none", "scarf_colour": "red", "skin": 0}
NAMES = list(PALETTE)
COLOURS = np.array([PALETTE[n] for n in NAMES], dtype=np.float32)


def _share_of(arr: np.ndarray, colour: str) -> float:
    """Share of the pixels whose nearest palette colour is ``colour``."""
    pixels = arr.reshape(-1, 3).astype(np.float32)
    if not len(pixels):
        return 0.0
    nearest = ((pixels[:, None, :] - COLOURS[None]) ** 2).sum(-1).argmin(1)
    return float((nearest == NAMES.index(colour)).mean())


def _crop(arr: np.ndarray, box: list[float]) -> np.ndarray:
    h, w = arr.shape[:2]
    x0, y0, x1, y1 = box
    return arr[int(y0 * h):int(np.ceil(y1 * h)), int(x0 * w):int(np.ceil(x1 * w))]


def test_region_pixels_carry_the_garment_colour():
    """The box of each part holds its colour far above the image's share (mirrored images included)."""
    shares = {part: [] for part in ("upper", "lower", "bag")}
    image_shares = {part: [] for part in shares}
    colour = {"upper": "red", "lower": "blue", "bag": "yellow"}
    flipped_bag_x = set()
    for k in range(12):
        regions: dict = {}
        img = render_person(PERSON, np.random.default_rng([3, k]), regions=regions)
        arr = np.asarray(img)
        assert set(regions) <= set(REGIONS) and {"upper", "lower", "shoes", "bag", "hair"} <= set(regions)
        for part in shares:
            x0, y0, x1, y1 = regions[part]
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            shares[part].append(_share_of(_crop(arr, regions[part]), colour[part]))
            image_shares[part].append(_share_of(arr, colour[part]))
        flipped_bag_x.add(regions["bag"][0] > 0.5)
    for part in shares:
        inside, overall = np.median(shares[part]), np.median(image_shares[part])
        assert inside > 0.3 and inside > 2.5 * overall, (part, inside, overall)
    assert flipped_bag_x == {True, False}  # the handbag appears on both sides: boxes follow the mirror flip
    # parts that are not drawn have no box
    regions = {}
    render_person(PERSON, np.random.default_rng(0), regions=regions)
    assert "hat" not in regions and "scarf" not in regions


def test_regions_do_not_change_the_image():
    a = np.asarray(render_person(PERSON, np.random.default_rng(7)))
    b = np.asarray(render_person(PERSON, np.random.default_rng(7), regions={}))
    assert np.array_equal(a, b)


def test_regions_file_written_and_loaded(tmp_path):
    root = make_synthetic_pedes(tmp_path / "s", "CUHK-PEDES", 9, 2, seed=1, test_images_per_id=3)
    table = json.loads((root / "regions.json").read_text())
    images = sorted(p.relative_to(root / "imgs").as_posix() for p in root.glob("imgs/*/*.jpg"))
    assert sorted(table["images"]) == images
    first = root / "imgs" / images[0]
    assert load_regions(first) == table["images"][images[0]]
    manifest = json.loads((root / "manifest.json").read_text())
    counts = {}
    for rel in images:
        split, name = rel.split("/")
        counts.setdefault(split, {}).setdefault(name.split("_")[0], 0)
        counts[split][name.split("_")[0]] += 1
    assert set(counts["test"].values()) == {3} and set(counts["train"].values()) == {2}
    assert manifest["params"]["test_images_per_id"] == 3
    attrs = json.loads((root / "attributes.json").read_text())
    assert set(attrs) == {"format", "identities"}  # the existing file keeps its keys
    with pytest.raises(FileNotFoundError, match="imgs"):
        load_regions(tmp_path / "elsewhere.jpg")


def test_test_split_with_one_caption_per_image(tmp_path):
    """ICFG-PEDES's structure on the test split only: one caption per test image, two per training image; the
    setting is part of the folder's name and manifest, so the default folder is a different one."""
    from irra_core.config import load_config
    from irra_core.data import prepare_dataset
    from irra_core.data.synthetic import synthetic_dir

    root = make_synthetic_pedes(tmp_path / "s", "CUHK-PEDES", 9, 2, seed=1, test_images_per_id=3,
                                test_captions_per_image=1)
    entries = json.loads((root / "reid_raw.json").read_text())
    per_split = {}
    for entry in entries:
        per_split.setdefault(entry["split"], set()).add(len(entry["captions"]))
    assert per_split["test"] == {1} and per_split["train"] == {2} and per_split["val"] == {2}
    assert json.loads((root / "manifest.json").read_text())["params"]["test_captions_per_image"] == 1
    plain = make_synthetic_pedes(tmp_path / "p", "CUHK-PEDES", 9, 2, seed=1, test_images_per_id=3)
    assert "test_captions_per_image" not in json.loads((plain / "manifest.json").read_text())["params"]
    assert synthetic_dir("d", "CUHK-PEDES", 9, 2, 1, 3, None, 1).name.endswith("-c1-s1")
    with pytest.raises(ValueError, match="test_captions_per_image"):
        make_synthetic_pedes(tmp_path / "z", "CUHK-PEDES", 9, 2, seed=1, test_captions_per_image=0)
    cfg = load_config(None, {"data.root": str(tmp_path / "data"), "data.synthetic_identities": 9,
                             "data.synthetic_images_per_id": 2, "data.synthetic_test_images_per_id": 3,
                             "data.synthetic_test_captions_per_image": 1})
    ds = prepare_dataset(cfg)
    assert len(ds.test["captions"]) == len(ds.test["image_pids"])  # caption k describes image k
    assert list(ds.test["caption_pids"]) == list(ds.test["image_pids"])


def test_synth_command_writes_one_caption_per_test_image(tmp_path, capsys):
    from irra_core.data.__main__ import main

    root = tmp_path / "cli"
    assert main(["synth", "--root", str(root), "--identities", "9", "--images-per-id", "2",
                 "--test-images-per-id", "3", "--test-captions-per-image", "1"]) == 0
    assert json.loads((root / "manifest.json").read_text())["params"]["test_captions_per_image"] == 1
    assert main(["synth", "--root", str(tmp_path / "bad"), "--identities", "9", "--test-captions-per-image", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "test_captions_per_image must be >= 1" in err


def test_pointing_game_concentrated_and_flat():
    grid = (8, 3)
    box = [0.0, 0.25, 1.0, 0.5]  # rows 2 and 3 (centres 0.3125, 0.4375): 6 of 24 cells
    inside = cells_in_box(box, grid)
    assert int(inside.sum()) == 6
    peaked = torch.zeros(24)
    peaked[inside.nonzero()[0]] = 1.0
    assert pointing_game(peaked, box, grid) == (1.0, 0.25)
    assert pointing_game(torch.full((24,), 1 / 24), box, grid) == (pytest.approx(0.25), 0.25)
    outside = torch.zeros(24)
    outside[0] = 1.0
    assert pointing_game(outside, box, grid)[0] == 0.0
    with pytest.raises(ValueError, match="grid"):
        pointing_game(torch.zeros(10), box, grid)


def test_attribute_words_and_score_table():
    tokens = ["<|startoftext|>", "a</w>", "woman</w>", "in</w>", "a</w>", "red</w>", "long</w>", "coat</w>",
              "and</w>", "blue</w>", "pants</w>", ".</w>", "<|endoftext|>"]
    assert attribute_words(tokens) == [(5, "upper", "colour"), (7, "upper", "noun"), (9, "lower", "colour"),
                                       (10, "lower", "noun")]
    grid = (8, 3)
    regions = {"upper": [0.0, 0.0, 1.0, 0.5], "lower": [0.0, 0.5, 1.0, 1.0]}
    maps = torch.full((len(tokens), 24), 1 / 24)
    maps[5] = 0
    maps[5, 0] = 1  # "red" peaks in the upper half
    maps[10] = 0
    maps[10, 0] = 1  # "pants" peaks in the upper half too: a miss
    table = score_pointing([(maps, tokens, regions)], grid).set_index(["part", "kind"])
    assert table.loc[("upper", "colour"), "hit_rate"] == 100.0
    assert table.loc[("lower", "noun"), "hit_rate"] == 0.0
    assert table.loc[("upper", "noun"), "hit_rate"] == pytest.approx(50.0)  # flat: the uniform rate
    assert table.loc[("all", "all"), "words"] == 4


def test_word_patch_maps_on_untrained_models(tmp_path):
    """Both readers produce (L, P) maps with the split's boxes; scoring and plotting run end to end."""
    from irra_core.config import load_config
    from irra_core.data import prepare_dataset
    from irra_core.model import build_model
    from irra_core.viz import attention as A
    from irra_core.viz.inspect import InspectRun, pointing_pairs, word_patch_maps

    tables = {}
    cfgs = {arch: load_config(f"{arch}-cpu", {"data.root": str(tmp_path)}, smoke=True) for arch in ("irra", "php")}
    ds = prepare_dataset(cfgs["irra"])
    for arch, cfg in cfgs.items():
        torch.manual_seed(0)
        run = InspectRun(name=arch, model=build_model(cfg, ds.num_classes).eval(), split=ds.test, cfg=cfg,
                         img_size=tuple(cfg.data.img_size), text_length=cfg.data.text_length)
        samples, grid, source, images = word_patch_maps(run, 6, seed=0)
        pairs = pointing_pairs(run, 6, seed=0)
        assert images == [g for _, g in pairs] and len(samples) == 6
        assert len({q for q, _ in pairs}) == 6 and pairs == pointing_pairs(run, 6, seed=0)
        assert all(run.split["image_pids"][g] == run.split["caption_pids"][q] for q, g in pairs)
        assert len(pointing_pairs(run, 10**6, seed=0)) == len(run.split["captions"])  # capped at the split
        assert source == ("cross-attention" if arch == "irra" else "CRFM")
        for maps, tokens, regions in samples:
            assert maps.shape == (len(tokens), grid[0] * grid[1])
            assert torch.all(maps >= 0)
            assert "upper" in regions
        tables[arch] = A.pointing_by_part(A.score_pointing(samples, grid))
        assert tables[arch]["part"].iloc[-1] == "all" and tables[arch]["words"].iloc[-1] > 0
        A.plot_pointing_examples(samples[:2], grid, [run.display_image(g) for g in images[:2]])
    A.plot_pointing(tables)


def test_peak_concentration_finds_a_background_sink_and_spreads_ties():
    from irra_core.viz.attention import peak_concentration, sink_verdict

    tokens = ["<|startoftext|>", "a</w>", "red</w>", "coat</w>", "and</w>", "blue</w>", "pants</w>", "<|endoftext|>"]
    grid = (8, 3)
    regions = {"upper": [0.3, 0.2, 0.7, 0.5], "lower": [0.3, 0.5, 0.7, 0.9]}  # the middle column only
    sunk = torch.full((len(tokens), 24), 0.01)
    sunk[:, 0] = 1.0  # every word peaks on the top-left cell, outside both parts
    peaks = peak_concentration([(sunk, tokens, regions)] * 3, grid)
    assert peaks["words"] == 12 and peaks["cell"] == (0, 0)
    assert peaks["share"] == pytest.approx(100.0) and peaks["outside_parts"] == pytest.approx(100.0)
    assert peaks["even"] == pytest.approx(100 / 24)
    assert "an attention sink" in sink_verdict("irra", peaks) and "(row 0, col 0)" in sink_verdict("irra", peaks)
    flat = peak_concentration([(torch.ones(len(tokens), 24), tokens, regions)], grid)
    assert flat["share"] == pytest.approx(100 / 24)  # ties share the credit: no cell stands out
    assert "no background sink" in sink_verdict("irra", flat)
    pointed = torch.zeros(len(tokens), 24)
    pointed[[2, 3], 3 * 2 + 1] = 1.0  # upper words peak in the middle column, row 2: inside their part
    pointed[[5, 6], 3 * 5 + 1] = 1.0  # lower words, row 5
    mixed = peak_concentration([(pointed, tokens, regions)], grid)
    assert mixed["share"] == pytest.approx(50.0) and mixed["outside_parts"] == pytest.approx(0.0)
    assert "no background sink" in sink_verdict("php", mixed)
    assert "no attribute words" in sink_verdict("php", peak_concentration([], grid))
