"""Integrity check: planted faults are each found; a clean synthetic set passes; the CLI exits non-zero."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from irra_core.data.integrity import check_dataset
from irra_core.data.synthetic import make_synthetic_pedes


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_synthetic_pedes(tmp_path_factory.mktemp("integ") / "CUHK-PEDES", "CUHK-PEDES", 12, 2, seed=4)


@pytest.fixture()
def ds(source, tmp_path):
    dst = tmp_path / "CUHK-PEDES"
    shutil.copytree(source, dst)
    return dst


def _entries(root):
    return json.loads((root / "reid_raw.json").read_text())


def _write(root, entries):
    (root / "reid_raw.json").write_text(json.dumps(entries))


def test_clean_set_passes(ds):
    report = check_dataset("CUHK-PEDES", ds)
    assert report.ok, report.summary()
    assert report.stats["splits"]["train"]["images"] > 0 and report.stats["caption_tokens"]["truncated"] == 0
    assert list(report.to_dataframe().columns) == ["severity", "kind", "split", "path", "message"]


def test_finds_missing_image(ds):
    victim = ds / "imgs" / _entries(ds)[5]["file_path"]
    victim.unlink()
    report = check_dataset("CUHK-PEDES", ds)
    (issue,) = [i for i in report.errors if i.kind == "missing_images"]
    folder = victim.parent.relative_to(ds)
    assert not report.ok and issue.path == str(folder) and victim.name in issue.message
    assert report.missing_files == [{"path": str(victim.resolve()), "split": _entries(ds)[5]["split"]}]


def test_missing_folders_are_grouped_with_counts_and_the_json_keeps_every_file(ds, tmp_path):
    from irra_core.data.__main__ import main

    entries = _entries(ds)
    train_files = sorted({e["file_path"] for e in entries if e["split"] == "train"})
    shutil.rmtree(ds / "imgs" / "train")  # a whole folder, as when an archive was not unpacked
    (ds / "imgs" / [e["file_path"] for e in entries if e["split"] == "test"][0]).unlink()
    report = check_dataset("CUHK-PEDES", ds, decode_images=False)
    groups = [i for i in report.errors if i.kind == "missing_images"]
    # one issue per folder, largest first, not one per file
    assert [g.path for g in groups] == ["imgs/train", "imgs/test"]
    assert f"{len(train_files)} of the {len(train_files)} image files" in groups[0].message
    assert "the folder itself does not exist" in groups[0].message and groups[0].split == "train"
    assert "1 of the" in groups[1].message and "does not exist" not in groups[1].message
    assert len(report.missing_files) == len(train_files) + 1
    out = tmp_path / "report.json"
    assert main(["check", "--dataset", "CUHK-PEDES", "--root", str(ds), "--no-decode", "--json", str(out)]) == 1
    listed = json.loads(out.read_text())["missing_files"]
    assert sorted(m["path"] for m in listed if m["split"] == "train") == sorted(
        str((ds / "imgs" / f).resolve()) for f in train_files)


def test_finds_identity_overlap(ds):
    entries = _entries(ds)
    test_entry = next(e for e in entries if e["split"] == "test")
    train_id = next(e["id"] for e in entries if e["split"] == "train")
    test_entry["id"] = train_id
    _write(ds, entries)
    report = check_dataset("CUHK-PEDES", ds)
    overlap = [i for i in report.errors if i.kind == "identity_overlap"]
    assert overlap and f"identity {train_id}" in overlap[0].message


def test_finds_duplicate_image_across_identities(ds):
    entries = _entries(ds)
    a, b = entries[0], next(e for e in entries if e["id"] != entries[0]["id"])
    shutil.copyfile(ds / "imgs" / a["file_path"], ds / "imgs" / b["file_path"])
    report = check_dataset("CUHK-PEDES", ds)
    dup = [i for i in report.errors if i.kind == "duplicate_image"]
    assert dup and str(a["id"]) in dup[0].message and str(b["id"]) in dup[0].message


def test_finds_corrupt_file(ds):
    victim = ds / "imgs" / _entries(ds)[2]["file_path"]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])  # truncated JPEG
    report = check_dataset("CUHK-PEDES", ds)
    assert [i.path for i in report.errors if i.kind == "corrupt_image"] == [str(victim.resolve())]


def test_real_dataset_split_sizes_compared_with_published(ds):
    (ds / ".irra_synthetic").unlink()  # no longer recognised as synthetic: compared with the paper's sizes
    report = check_dataset("CUHK-PEDES", ds)
    sizes = [i for i in report.warnings if i.kind == "split_size"]
    assert {i.split for i in sizes} == {"train", "val", "test"} and "published 11003" in sizes[0].message


def test_finds_non_contiguous_training_pids(ds):
    entries = _entries(ds)
    for e in entries:
        if e["id"] == 2:
            e["id"] = 900
    _write(ds, entries)
    assert "pid_contiguity" in {i.kind for i in check_dataset("CUHK-PEDES", ds).errors}


def test_warns_on_shared_captions_and_truncation(ds):
    entries = _entries(ds)
    other = next(e for e in entries if e["id"] != entries[0]["id"])
    other["captions"][0] = entries[0]["captions"][0]
    entries[1]["captions"][1] = " ".join(["red"] * 90)
    _write(ds, entries)
    report = check_dataset("CUHK-PEDES", ds)
    assert {"duplicate_caption", "truncated_captions"} <= report.kinds() and report.ok


def test_cli_exit_codes(ds, capsys):
    from irra_core.data.__main__ import main

    assert main(["check", "--dataset", "CUHK-PEDES", "--root", str(ds.parent), "--no-decode"]) == 0
    (ds / "imgs" / _entries(ds)[0]["file_path"]).unlink()
    assert main(["check", "--dataset", "CUHK-PEDES", "--root", str(ds)]) == 1
    assert "missing_image" in capsys.readouterr().out
    assert main(["check", "--dataset", "Market1501", "--root", str(ds)]) == 2


@pytest.mark.slow
def test_cli_subprocess_nonzero_exit_on_errors(ds):
    (ds / "imgs" / _entries(ds)[0]["file_path"]).unlink()
    bad = subprocess.run([sys.executable, "-m", "irra_core.data", "check", "--dataset", "CUHK-PEDES",
                          "--root", str(ds)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "missing_image" in bad.stdout
