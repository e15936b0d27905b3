"""Malformed input is never silent: every error names the file or field (and what to do)."""
from __future__ import annotations

import json
import shutil

import pytest

from irra_core.config import load_config
from irra_core.data import DatasetError, ImageReadError, build_dataset, build_eval_loaders, build_train_loader
from irra_core.data.synthetic import make_synthetic_pedes


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_synthetic_pedes(tmp_path_factory.mktemp("bad") / "CUHK-PEDES", "CUHK-PEDES", 9, 2, seed=1)


@pytest.fixture()
def cuhk(source, tmp_path):
    dst = tmp_path / "CUHK-PEDES"
    shutil.copytree(source, dst)
    return dst


def _edit(folder, fn, name="reid_raw.json"):
    entries = json.loads((folder / name).read_text())
    fn(entries)
    (folder / name).write_text(json.dumps(entries))
    return entries


def test_wrong_root(tmp_path):
    with pytest.raises(DatasetError, match="does not exist") as exc:
        build_dataset("CUHK-PEDES", tmp_path / "nowhere")
    assert "nowhere" in str(exc.value)


def test_missing_annotation_file(cuhk):
    (cuhk / "reid_raw.json").unlink()
    with pytest.raises(DatasetError, match="reid_raw.json"):
        build_dataset("CUHK-PEDES", cuhk)


def test_missing_image_folder(cuhk):
    shutil.rmtree(cuhk / "imgs")
    with pytest.raises(DatasetError, match="imgs"):
        build_dataset("CUHK-PEDES", cuhk)


def test_malformed_json(cuhk):
    (cuhk / "reid_raw.json").write_text('[{"split": "train", "id": 1,')
    with pytest.raises(DatasetError, match=r"reid_raw.json: malformed JSON at line 1"):
        build_dataset("CUHK-PEDES", cuhk)


def test_annotation_not_a_list(cuhk):
    (cuhk / "reid_raw.json").write_text('{"split": "train"}')
    with pytest.raises(DatasetError, match="reid_raw.json: expected a JSON list"):
        build_dataset("CUHK-PEDES", cuhk)


@pytest.mark.parametrize("field", ["id", "captions", "file_path", "split"])
def test_entry_missing_field(cuhk, field):
    _edit(cuhk, lambda e: e[3].pop(field))
    with pytest.raises(DatasetError, match=rf"reid_raw.json: entry 3 has no field '{field}'"):
        build_dataset("CUHK-PEDES", cuhk)


def test_rstpreid_needs_img_path(tmp_path):
    root = make_synthetic_pedes(tmp_path / "RSTPReid", "RSTPReid", 9, 1, seed=0)
    _edit(root, lambda e: e[0].__setitem__("file_path", e[0].pop("img_path")), "data_captions.json")
    with pytest.raises(DatasetError, match="entry 0 has no field 'img_path'"):
        build_dataset("RSTPReid", root)


def test_empty_captions(cuhk):
    _edit(cuhk, lambda e: e[2].__setitem__("captions", []))
    with pytest.raises(DatasetError, match=r"entry 2 .*'captions' must be a non-empty list"):
        build_dataset("CUHK-PEDES", cuhk)


def test_blank_caption_string(cuhk):
    _edit(cuhk, lambda e: e[1]["captions"].__setitem__(1, "   "))
    with pytest.raises(DatasetError, match=r"entry 1 .*caption 1 in field 'captions' is empty"):
        build_dataset("CUHK-PEDES", cuhk)


def test_non_integer_id(cuhk):
    _edit(cuhk, lambda e: e[0].__setitem__("id", "p7"))
    with pytest.raises(DatasetError, match="entry 0: field 'id' = 'p7' is not an integer"):
        build_dataset("CUHK-PEDES", cuhk)


def test_non_contiguous_train_pids(cuhk):
    _edit(cuhk, lambda e: [x.__setitem__("id", x["id"] + 100) for x in e if x["id"] == 1])
    with pytest.raises(DatasetError, match="reid_raw.json: training pids are not contiguous"):
        build_dataset("CUHK-PEDES", cuhk)


def test_unknown_dataset_name(cuhk):
    with pytest.raises(DatasetError, match="unknown dataset name 'MSCOCO'"):
        build_dataset("MSCOCO", cuhk)


def _cfg(**over):
    base = {"data.img_size": [32, 16], "data.batch_size": 4, "data.text_length": 16, "loss.names": "sdm+id"}
    base.update(over)
    return load_config(None, base)


def test_missing_image_raises_naming_file(cuhk):
    ds = build_dataset("CUHK-PEDES", cuhk)
    victim = ds.test["img_paths"][0]
    (cuhk / "imgs" / victim.split("imgs/")[1]).unlink()
    gallery, _ = build_eval_loaders(_cfg(), "test", dataset=ds)
    with pytest.raises(ImageReadError, match=f"{victim} does not exist.*skip_bad_images"):
        next(iter(gallery))


def test_corrupt_image_fails_once_without_retry(cuhk):
    ds = build_dataset("CUHK-PEDES", cuhk)
    victim = ds.train[0][2]
    with open(victim, "wb") as handle:
        handle.write(b"\xff\xd8 not a jpeg")
    with pytest.raises(ImageReadError, match=f"{victim} cannot be decoded"):
        build_train_loader(_cfg(), ds)  # the up-front cache decodes it: one attempt, a clear error


def test_skip_bad_images_only_on_request_and_reported(cuhk):
    ds = build_dataset("CUHK-PEDES", cuhk)
    victim = ds.train[0][2]
    with open(victim, "wb") as handle:
        handle.write(b"garbage")
    with pytest.warns(UserWarning, match=f"skipped 1 unreadable image.*{victim}"):
        loader = build_train_loader(_cfg(**{"data.skip_bad_images": True}), ds)
    assert victim in loader.dataset.skipped
    assert all(s[2] != victim for s in loader.dataset.samples)
    assert len(loader.dataset) == len(ds.train) - sum(s[2] == victim for s in ds.train)
