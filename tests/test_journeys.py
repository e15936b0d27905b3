"""User journeys on data in the real datasets' formats (issue 12): the README's PHP command on ICFG-PEDES,
CUHK-PEDES and RSTPReid layouts, model selection without a validation split, ``--smoke`` keeping the named
dataset, annotation files under other names, missing image folders, and expected command-line errors (one
``error: ...`` paragraph, exit 2, no run folder left behind)."""
from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from irra_core.config import load_config
from irra_core.data import DatasetError, build_dataset, prepare_dataset
from irra_core.data.synthetic import make_synthetic_pedes
from irra_core.train import config_from_argv

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ("ICFG-PEDES", "CUHK-PEDES", "RSTPReid")


def readme_php_command() -> list[str]:
    """The arguments of the README's PHP command (section 'On a GPU, with pretrained CLIP'), as printed."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## On a GPU, with pretrained CLIP"):]
    block = section[section.index("```bash") + len("```bash"):]
    block = block[:block.index("```")].replace("\\\n", " ")
    line = next(ln for ln in block.splitlines() if "-m irra_core.train" in ln and "--cnum" in ln)
    args = shlex.split(line)
    return args[args.index("irra_core.train") + 1:]


def _with(args: list[str], option: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(option) + 1] = value
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A data folder holding small synthetic sets in each real dataset's layout (data/<name>/...)."""
    root = tmp_path_factory.mktemp("journeys") / "data"
    for fmt in FORMATS:
        make_synthetic_pedes(root / fmt, fmt, 16, 2, seed=3)
    return root


def _annotation_captions(folder: Path) -> set[str]:
    ann = next(p for p in folder.glob("*.json") if p.name not in ("manifest.json", "attributes.json"))
    return {c for e in json.loads(ann.read_text()) for c in e["captions"]}


# --------------------------------------------------------------------------------------------------
# the README's PHP command
# --------------------------------------------------------------------------------------------------
def test_readme_php_command_names_icfg_and_parses():
    args = readme_php_command()
    assert args[args.index("--dataset_name") + 1] == "ICFG-PEDES" and "--cnum" in args
    cfg, _ = config_from_argv(args)
    assert cfg.data.dataset == "ICFG-PEDES" and cfg.train.select_on == "val" and cfg.model.pretrained == "ViT-B/16"


@pytest.mark.parametrize("fmt", FORMATS)
def test_readme_php_command_at_smoke_sizes_trains_on_each_format(data, tmp_path, fmt, capsys):
    from irra_core.train import main

    # the command as printed; only the dataset name (for the other formats) and the data folder differ, and
    # --smoke shrinks the sizes (the OpenAI weights cannot be fetched here; smoke trains from scratch)
    args = _with(_with(readme_php_command(), "--dataset_name", fmt), "--root_dir", str(data))
    run = tmp_path / "run"
    assert main(args + ["--smoke", "--run_dir", str(run), "--set", "train.progress=none"]) == 0
    out = capsys.readouterr().out
    assert f"smoke: tiny sizes on {fmt} from {data}" in out
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["dataset"] == fmt and config["data"]["root"] == str(data)
    assert config["model"]["arch"] == "php" and config["model"]["num_experts"] == 4
    # the named dataset was read: every test query is a caption of its annotation file
    with open(run / "eval" / "last_test" / "queries.csv", newline="") as handle:
        queries = {row["caption"] for row in csv.DictReader(handle)}
    assert queries and queries <= _annotation_captions(data / fmt)
    metrics = json.loads((run / "metrics.json").read_text())
    selection = metrics["selection"]
    if fmt == "ICFG-PEDES":  # no validation split: the last epoch, and the run says so
        assert selection["policy"] == "last" and selection["requested"] == "val"
        assert "ICFG-PEDES has no validation split" in selection["note"]
        assert metrics["best"] is None and not (run / "checkpoints" / "best.pt").exists()
        assert "selection: ICFG-PEDES has no validation split" in out
    else:
        assert selection["policy"] == "val" and selection["split"] == "val" and metrics["best"]["epoch"] == 1


# --------------------------------------------------------------------------------------------------
# data.val_from_train and data.max_identities
# --------------------------------------------------------------------------------------------------
def _cfg(data, fmt="ICFG-PEDES", **over):
    values = {"data.dataset": fmt, "data.root": str(data), "train.progress": "none"}
    values.update(over)
    return load_config("php-cpu", values, smoke=True)


def test_val_from_train_holds_out_identities_deterministically(data):
    full = prepare_dataset(_cfg(data, **{"data.max_identities": 0}))
    assert not full.val["img_paths"] and full.val_from_train is None
    cfg = _cfg(data, **{"data.max_identities": 0, "data.val_from_train": 3, "data.val_from_train_seed": 5})
    held = prepare_dataset(cfg)
    again = prepare_dataset(cfg)
    record = held.val_from_train
    assert record == again.val_from_train and len(record["raw_ids"]) == 3 and record["seed"] == 5
    assert sorted(set(held.val["image_pids"])) == record["raw_ids"]
    # the held-out people left training; the rest are renumbered 0..C-1 for the ID classifier
    train_images = {path for _, _, path, _ in held.train}
    assert not train_images & set(held.val["img_paths"])
    assert sorted({pid for pid, *_ in held.train}) == list(range(full.num_classes - 3)) == list(range(held.num_classes))
    assert len(held.val["img_paths"]) + len(train_images) == len({p for _, _, p, _ in full.train})
    assert held.test == full.test
    other = prepare_dataset(_cfg(data, **{"data.max_identities": 0, "data.val_from_train": 3,
                                          "data.val_from_train_seed": 6}))
    assert other.val_from_train["raw_ids"] != record["raw_ids"]  # the seed chooses


def test_val_from_train_is_recorded_in_the_run_and_selects_on_it(data, tmp_path):
    from irra_core.engine import fit

    cfg = _cfg(data, **{"data.val_from_train": 2, "train.max_steps": 2})
    result = fit(cfg, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "val_from_train.json").read_text())
    assert len(record["raw_ids"]) == 2 and record["dataset"] == "ICFG-PEDES"
    assert result.metrics["selection"]["policy"] == "val" and result.metrics["best"]["epoch"] == 1


def test_val_from_train_refuses_a_dataset_that_has_a_val_split(data):
    with pytest.raises(DatasetError, match="already has a val split.*data.val_from_train=0"):
        prepare_dataset(_cfg(data, "CUHK-PEDES", **{"data.val_from_train": 2}))
    with pytest.raises(DatasetError, match="only .* training identities"):
        prepare_dataset(_cfg(data, **{"data.val_from_train": 500, "data.max_identities": 0}))


def test_max_identities_keeps_the_first_identities_of_each_split(data):
    full = build_dataset("CUHK-PEDES", data)
    small = prepare_dataset(_cfg(data, "CUHK-PEDES", **{"data.max_identities": 2}))
    assert small.subset["max_identities"] == 2
    assert sorted(set(small.test["image_pids"])) == sorted(set(full.test["image_pids"]))[:2]
    assert sorted({pid for pid, *_ in small.train}) == [0, 1] and small.num_classes == 2
    assert set(small.train) <= set(full.train)


# --------------------------------------------------------------------------------------------------
# --smoke keeps the dataset the user named
# --------------------------------------------------------------------------------------------------
def test_smoke_keeps_the_named_dataset_and_only_shrinks(data):
    cfg, _ = config_from_argv(["--dataset_name", "ICFG-PEDES", "--root_dir", str(data), "--smoke"])
    assert cfg.data.dataset == "ICFG-PEDES" and cfg.data.root == str(data)
    assert cfg.data.max_identities > 0 and cfg.model.vision_layers == 1 and cfg.model.pretrained == ""
    dataset = prepare_dataset(cfg)
    assert dataset.name == "ICFG-PEDES" and all(Path(p).is_relative_to(data / "ICFG-PEDES")
                                                for p in dataset.test["img_paths"])
    # no dataset named: the synthetic set, as before (the workbook's smoke path)
    cfg, _ = config_from_argv(["--smoke"])
    assert cfg.data.dataset == "synthetic"
    from irra_core.workbook import workbook_config

    assert workbook_config("php", "cpu", "synthetic", smoke=True).data.dataset == "synthetic"
    assert workbook_config("php", "cpu", "RSTPReid", str(data), smoke=True).data.dataset == "RSTPReid"
    assert load_config("irra", {"data.dataset": "CUHK-PEDES"}, smoke=True).data.dataset == "CUHK-PEDES"


# --------------------------------------------------------------------------------------------------
# annotation files under other names
# --------------------------------------------------------------------------------------------------
@pytest.fixture()
def cuhk(data, tmp_path):
    folder = tmp_path / "data" / "CUHK-PEDES"
    shutil.copytree(data / "CUHK-PEDES", folder)
    return folder


def test_cuhk_pedes_json_gets_the_exact_rename(cuhk):
    (cuhk / "reid_raw.json").rename(cuhk / "CUHK-PEDES.json")
    with pytest.raises(DatasetError) as exc:
        build_dataset("CUHK-PEDES", cuhk.parent)
    message = str(exc.value)
    assert "reid_raw.json not found" in message and f"found {cuhk / 'CUHK-PEDES.json'}" in message
    assert f"`mv {cuhk / 'CUHK-PEDES.json'} {cuhk / 'reid_raw.json'}`" in message


def test_caption_all_json_is_named_with_the_field_it_lacks(cuhk):
    entries = json.loads((cuhk / "reid_raw.json").read_text())
    (cuhk / "reid_raw.json").unlink()
    (cuhk / "caption_all.json").write_text(json.dumps([{k: v for k, v in e.items() if k != "split"}
                                                       for e in entries]))
    with pytest.raises(DatasetError) as exc:
        build_dataset("CUHK-PEDES", cuhk)
    message = str(exc.value)
    assert "caption_all.json" in message and "original CUHK-PEDES release" in message
    assert "lack the 'split' field" in message and f"at {cuhk / 'reid_raw.json'}" in message
    assert "mv " not in message  # renaming alone would not do


def test_other_json_and_misspelt_folder_are_described(data, tmp_path):
    folder = tmp_path / "cuhk_pedes"
    shutil.copytree(data / "CUHK-PEDES", folder)
    with pytest.raises(DatasetError, match=rf"found the folder {re.escape(str(folder))}: rename it to "
                                           rf"{re.escape(str(tmp_path / 'CUHK-PEDES'))}"):
        build_dataset("CUHK-PEDES", tmp_path)
    entries = json.loads((folder / "reid_raw.json").read_text())
    (folder / "reid_raw.json").unlink()
    (folder / "annotations.json").write_text(json.dumps([{"image": e["file_path"]} for e in entries]))
    with pytest.raises(DatasetError, match=r"annotations.json; its entries lack the field\(s\) \['split', 'id', "
                                           r"'file_path', 'captions'\]"):
        build_dataset("CUHK-PEDES", folder)


def test_data_check_cli_reports_the_rename(cuhk, capsys):
    from irra_core.data.__main__ import main

    (cuhk / "reid_raw.json").rename(cuhk / "CUHK-PEDES.json")
    assert main(["check", "--dataset", "CUHK-PEDES", "--root", str(cuhk)]) == 1
    assert "rename it with `mv" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# missing image folders stop a run before it starts, grouped by folder
# --------------------------------------------------------------------------------------------------
def test_missing_image_folder_is_one_grouped_error_before_training(cuhk):
    listed = {e["file_path"] for e in json.loads((cuhk / "reid_raw.json").read_text()) if e["split"] == "test"}
    shutil.rmtree(cuhk / "imgs" / "test")
    cfg = load_config("irra-cpu", {"data.dataset": "CUHK-PEDES", "data.root": str(cuhk.parent),
                                   "data.max_identities": 0})
    with pytest.raises(DatasetError) as exc:
        prepare_dataset(cfg)
    message = str(exc.value)
    assert f"{len(listed)} of " in message and "in 1 folder(s)" in message
    assert f"imgs/test/: {len(listed)} of {len(listed)} file(s) (the folder does not exist)" in message
    assert message.count(".jpg") == 3  # a few examples, not the whole list
    assert "--json report.json" in message


# --------------------------------------------------------------------------------------------------
# command-line errors: one paragraph, exit 2, no traceback, no run folder
# --------------------------------------------------------------------------------------------------
def _run(module: str, *args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          env=environ, cwd=cwd)


def _one_paragraph(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, stderr
    tail = stderr[stderr.index("error:"):].rstrip("\n").splitlines()
    assert all(ln.startswith("  ") for ln in tail[1:]), stderr  # continuation lines of that paragraph only
    return " ".join(ln.strip() for ln in tail)


def _train_error(capsys, argv: list[str]) -> str:
    from irra_core.train import main

    assert main(argv) == 2
    return _one_paragraph(capsys.readouterr().err)


def test_train_errors_are_one_paragraph_and_leave_no_run_folder(data, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    php = _with(readme_php_command(), "--root_dir", str(data)) + ["--output_dir", str(runs)]
    smoke = php + ["--smoke", "--set", "train.progress=none"]
    # a missing dataset
    message = _train_error(capsys, _with(smoke, "--root_dir", str(tmp_path / "nowhere")))
    assert "dataset root" in message and "nowhere does not exist" in message
    # a misspelt key, a value of the wrong type
    assert "unknown key 'model.experts'" in _train_error(capsys, smoke + ["--set", "model.experts=3"])
    assert "'train.num_epoch' expects int" in _train_error(capsys, smoke + ["--set", "train.num_epoch=many"])
    # a malformed annotation file
    broken = tmp_path / "broken"
    shutil.copytree(data / "ICFG-PEDES", broken / "ICFG-PEDES")
    (broken / "ICFG-PEDES" / "ICFG-PEDES.json").write_text('[{"split": "train", "id": 0,')
    assert "ICFG-PEDES.json: malformed JSON at line 1" in _train_error(capsys, _with(smoke, "--root_dir", str(broken)))
    # a missing image folder
    shutil.copytree(data / "RSTPReid", broken / "RSTPReid")
    shutil.rmtree(broken / "RSTPReid" / "imgs" / "train")
    message = _train_error(capsys, _with(_with(smoke, "--root_dir", str(broken)), "--dataset_name", "RSTPReid"))
    assert "imgs/train/" in message and "the folder does not exist" in message
    # the OpenAI weights cannot be fetched offline (the paper preset builds its towers from them)
    monkeypatch.setenv("IRRA_OFFLINE", "1")
    monkeypatch.setenv("IRRA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("IRRA_CLIP_CACHE", str(tmp_path / "cache" / "clip"))
    monkeypatch.setenv("IRRA_DATA_ROOT", str(tmp_path / "no-data"))
    message = _train_error(capsys, php + ["--set", "model.precision=fp32", "--set", "data.max_identities=4",
                                          "--set", "train.progress=none"])
    assert "ViT-B-16.pt" in message and "IRRA_OFFLINE" in message
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())


def test_a_finished_run_is_never_removed_by_a_failed_restart(data, tmp_path, capsys):
    from irra_core.train import main

    run = tmp_path / "run"
    argv = _with(readme_php_command(), "--root_dir", str(data)) + ["--smoke", "--run_dir", str(run), "--set",
                                                                     "train.progress=none"]
    assert main(argv) == 0
    message = _train_error(capsys, argv)  # the same folder again, without --resume
    assert "resume" in message and (run / "metrics.json").exists() and (run / "checkpoints" / "last.pt").exists()


def test_debug_keeps_the_traceback(tmp_path):
    from irra_core.train import main

    with pytest.raises(DatasetError):
        main(["--smoke", "--dataset_name", "ICFG-PEDES", "--root_dir", str(tmp_path / "nowhere"),
              "--output_dir", str(tmp_path / "runs"), "--debug"])
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_cli_errors_in_subprocesses(data, tmp_path):
    """The real entry points: exit status 2, one ``error:`` paragraph, nothing else on stderr."""
    runs = tmp_path / "runs"
    proc = _run("irra_core.train", *_with(readme_php_command(), "--root_dir", str(tmp_path / "nowhere")),
                "--smoke", "--output_dir", str(runs))
    assert proc.returncode == 2 and "nowhere does not exist" in _one_paragraph(proc.stderr)
    assert not runs.exists() or not any(runs.iterdir())
    proc = _run("irra_core.test", "--config_file", str(tmp_path / "missing" / "config.yaml"))
    assert proc.returncode == 2 and "cannot read it" in _one_paragraph(proc.stderr)
    proc = _run("irra_core.data", "check", "--dataset", "Market-1501", "--root", str(data))
    assert proc.returncode == 2 and "unknown dataset name 'Market-1501'" in _one_paragraph(proc.stderr)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    proc = _run("irra_core.data", "synth", "--root", str(foreign), "--identities", "6")
    assert proc.returncode == 2 and "refusing to overwrite" in _one_paragraph(proc.stderr)
    proc = _run("irra_core.pipeline", "--dataset", "ICFG-PEDES", "--data-root", str(tmp_path / "nowhere"),
                "--runs-dir", str(runs), "--smoke", "--quiet")
    assert proc.returncode == 2 and "nowhere does not exist" in _one_paragraph(proc.stderr)
    assert not runs.exists() or not any(runs.iterdir())


def test_pipeline_checks_overrides_and_dataset_before_making_the_run_folder(data, tmp_path, capsys):
    from irra_core import pipeline

    runs = tmp_path / "runs"
    common = ["--runs-dir", str(runs), "--smoke", "--quiet", "--run-name", "r"]
    assert pipeline.main(common + ["--override", "model.experts=3"]) == 2
    assert "unknown key 'model.experts'" in _one_paragraph(capsys.readouterr().err)
    assert pipeline.main(common + ["--dataset", "CUHK-PEDES", "--data-root", str(tmp_path / "empty")]) == 2
    assert "does not exist" in _one_paragraph(capsys.readouterr().err)
    (tmp_path / "empty" / "CUHK-PEDES").mkdir(parents=True)
    shutil.copy(data / "CUHK-PEDES" / "reid_raw.json", tmp_path / "empty" / "CUHK-PEDES" / "caption_all.json")
    assert pipeline.main(common + ["--dataset", "CUHK-PEDES", "--data-root", str(tmp_path / "empty")]) == 2
    assert "caption_all.json" in _one_paragraph(capsys.readouterr().err)
    assert not (runs / "r").exists()


def test_error_paragraph_keeps_paths_and_urls_whole_and_warnings_are_one_line(capsys):
    import warnings

    from irra_core.cli import UserError, format_error, run_cli

    path = "/data/CUHK-PEDES/CUHK-PEDES.json"
    url = "https://example.org/" + "x" * 120 + "/ViT-B-16.pt"
    text = format_error(UserError(f"rename {path} with care; fetch {url}\n\nsecond paragraph"), width=60)
    assert path in text and url in text and text.startswith("error: ") and "\n  second paragraph" in text

    shown = []

    def main(argv):  # pytest records warnings itself, so the format is read where a warning would use it
        shown.append(warnings.formatwarning("slow on the CPU", UserWarning, "engine.py", 1, "source line"))
        raise UserError("stop")

    assert run_cli(main, []) == 2
    assert shown == ["warning: slow on the CPU\n"] and capsys.readouterr().err == "error: stop\n"
    assert "engine.py" in warnings.formatwarning("x", UserWarning, "engine.py", 1, "")  # restored afterwards
