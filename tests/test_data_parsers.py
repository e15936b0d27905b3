"""Parsers on generated datasets in all three formats: split rules, pid rules, root handling."""
from __future__ import annotations

import json
import shutil

import pytest

from irra_core.data import build_dataset, prepare_dataset
from irra_core.data.synthetic import make_synthetic_pedes

FORMATS = ("CUHK-PEDES", "ICFG-PEDES", "RSTPReid")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    base = tmp_path_factory.mktemp("parsers")
    return {fmt: make_synthetic_pedes(base / fmt, fmt, num_identities=15, images_per_id=2, seed=3) for fmt in FORMATS}


@pytest.mark.parametrize("fmt", FORMATS)
def test_parser_split_and_pid_rules(generated, fmt):
    root = generated[fmt]
    ds = build_dataset(fmt, root)
    entries = json.loads(next(p for p in root.glob("*.json") if p.name not in ("attributes.json", "manifest.json"))
                         .read_text())
    offset = -1 if fmt == "CUHK-PEDES" else 0
    train_entries = [e for e in entries if e["split"] == "train"]
    # one training sample per caption, pid remapped, running image ids
    assert len(ds.train) == sum(len(e["captions"]) for e in train_entries)
    assert sorted({t[0] for t in ds.train}) == list(range(ds.num_classes))
    assert {t[0] for t in ds.train} == {e["id"] + offset for e in train_entries}
    assert [t[1] for t in ds.train][::2] == list(range(len(train_entries)))
    # test/val keep raw ids, gallery = one per entry, queries = one per caption, annotation order
    test_entries = [e for e in entries if e["split"] == "test"]
    assert ds.test["image_pids"] == [e["id"] for e in test_entries]
    assert ds.test["caption_pids"] == [e["id"] for e in test_entries for _ in e["captions"]]
    assert ds.test["captions"] == [c for e in test_entries for c in e["captions"]]
    path_field = "img_path" if fmt == "RSTPReid" else "file_path"
    assert ds.test["img_paths"][0] == str((root / "imgs" / test_entries[0][path_field]).resolve())
    if fmt == "ICFG-PEDES":
        assert ds.val["img_paths"] == [] and not any(e["split"] == "val" for e in entries)
    else:
        assert len(ds.val["img_paths"]) > 0


def test_root_may_be_dataset_folder_or_parent(tmp_path):
    make_synthetic_pedes(tmp_path / "RSTPReid", "RSTPReid", num_identities=9, images_per_id=1, seed=0)
    a, b = build_dataset("RSTPReid", tmp_path), build_dataset("rstpreid", tmp_path / "RSTPReid")
    assert a.train == b.train and a.root == b.root


def test_icfg_accepts_underscore_annotation_name(generated, tmp_path):
    dst = tmp_path / "ICFG-PEDES"
    shutil.copytree(generated["ICFG-PEDES"], dst)
    (dst / "ICFG-PEDES.json").rename(dst / "ICFG_PEDES.json")
    ds = build_dataset("ICFG-PEDES", tmp_path)
    assert ds.annotation_file.name == "ICFG_PEDES.json" and len(ds.train) > 0


def test_other_split_names_count_as_val(generated, tmp_path):
    dst = tmp_path / "CUHK-PEDES"
    shutil.copytree(generated["CUHK-PEDES"], dst)
    entries = json.loads((dst / "reid_raw.json").read_text())
    for e in entries:
        if e["split"] == "val":
            e["split"] = "validation"
    (dst / "reid_raw.json").write_text(json.dumps(entries))
    ds = build_dataset("CUHK-PEDES", dst)
    assert len(ds.val["img_paths"]) == sum(e["split"] == "validation" for e in entries)


def test_prepare_dataset_synthetic_layout(tmp_path):
    from irra_core.config import load_config

    cfg = load_config(None, {"data.root": str(tmp_path), "data.synthetic_identities": 9, "loss.names": "sdm",
                             "data.synthetic_images_per_id": 1, "data.synthetic_format": "RSTPReid"})
    ds = prepare_dataset(cfg)
    assert ds.root == (tmp_path / "synthetic" / "RSTPReid-n9-k1-s0").resolve()
    assert ds.name == "RSTPReid" and ds.num_classes > 0
