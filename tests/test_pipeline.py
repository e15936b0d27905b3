"""The workbook runner on small notebooks written by the tests (papermill costs ~4-6 s per notebook, so
only one test executes notebooks; the others stop before a kernel starts)."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from irra_core import pipeline
from irra_core import workbook as helpers  # `workbook` is a fixture here
from irra_core.pipeline import PipelineError, run_pipeline

STANDARD_CELL = """RUN_NAME: str = ""           # run folder
PRESET: str = "cpu"          # size family
DATASET: str = "synthetic"   # dataset
DATA_ROOT: str = "data"      # datasets folder
OVERRIDES: dict = {}         # dotted config overrides
SMOKE: bool = False          # tiny sizes
DEVICE: str = "auto"         # device
SEED: int = 1                # seed
RESUME: bool = True          # resume
INTERACTIVE: bool = True     # widgets"""


def write_notebook(path: Path, body: list[str], extra_params: str = "", standard: str = STANDARD_CELL) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("from irra_core.workbook import resolve_run_dir"),
                nbformat.v4.new_code_cell(standard + extra_params, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("run = resolve_run_dir(RUN_NAME, PRESET, DATASET)")]
    nb.cells += [nbformat.v4.new_code_cell(source) for source in body]
    nbformat.write(nb, path)
    return path


@pytest.fixture()
def workbook(tmp_path):
    """Two notebooks: 01_a declares EXTRA and counts its executions; 02_b fails in its third cell."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_notebook(notebooks / "01_a.ipynb",
                   ['with open(run / "count_a.txt", "a") as f:\n    f.write(str(EXTRA))'],
                   extra_params="\nEXTRA: int = 1             # a notebook's own parameter")
    write_notebook(notebooks / "02_b.ipynb", ['assert (run / "count_a.txt").exists()',
                                              'raise ValueError("boom in b")'])
    (notebooks / "README.md").write_text("not a notebook")
    return notebooks, tmp_path / "runs"


def test_unknown_or_misused_parameters_fail_before_anything_runs(workbook, capsys):
    notebooks, runs = workbook
    common = dict(notebooks_dir=notebooks, runs_dir=runs, run_name="r")
    with pytest.raises(PipelineError, match=r"unknown parameter 'EXTAR'.*EXTRA"):
        run_pipeline(params={"EXTAR": 2}, **common)
    # declared only by 01_a: selecting 02 alone makes it unknown
    with pytest.raises(PipelineError, match="unknown parameter 'EXTRA'"):
        run_pipeline(params={"EXTRA": 2}, only="02", **common)
    with pytest.raises(PipelineError, match="decided by the runner; use --run-name"):
        run_pipeline(params={"RUN_NAME": "other"}, **common)
    with pytest.raises(PipelineError, match="SEED='three' must be of type int"):
        run_pipeline(params={"SEED": "three"}, **common)
    assert pipeline.main(["--notebooks-dir", str(notebooks), "--runs-dir", str(runs), "--seed", "2",
                          "--param", "SEED=3"]) == 2  # an expected error: one paragraph, exit 2
    err = capsys.readouterr().err
    assert err.startswith("error: SEED is given twice") and "Traceback" not in err
    with pytest.raises(PipelineError, match=r"EXTRA='many'.*'EXTRA: int'"):
        run_pipeline(params={"EXTRA": "many"}, **common)
    with pytest.raises(PipelineError, match="--preset 'gpu'"):
        run_pipeline(preset="gpu", **common)
    assert not runs.exists(), "a rejected call must not create the run folder"


def test_notebook_without_standard_parameters_is_rejected(tmp_path):
    write_notebook(tmp_path / "00_x.ipynb", ["pass"], standard='RUN_NAME: str = ""')
    with pytest.raises(PipelineError, match=r"00_x.ipynb.*lacks the standard parameters \['PRESET'"):
        run_pipeline(notebooks_dir=tmp_path, runs_dir=tmp_path / "runs", run_name="r")


def test_existing_run_folder_is_refused_unless_resuming(workbook):
    notebooks, runs = workbook
    (runs / "taken").mkdir(parents=True)
    with pytest.raises(PipelineError, match="already exists; pass --resume"):
        run_pipeline(notebooks_dir=notebooks, runs_dir=runs, run_name="taken")
    with pytest.raises(PipelineError, match="does not exist"):
        run_pipeline(notebooks_dir=notebooks, runs_dir=runs, run_name="missing", resume=True)
    with pytest.raises(PipelineError, match="--resume needs --run-name"):
        run_pipeline(notebooks_dir=notebooks, runs_dir=runs, resume=True)


def test_failure_names_notebook_and_cell_then_resume_skips_finished(workbook, capsys):
    notebooks, runs = workbook
    sources = {p.name: p.read_bytes() for p in notebooks.glob("*.ipynb")}
    argv = ["--notebooks-dir", str(notebooks), "--runs-dir", str(runs), "--run-name", "r", "--quiet",
            "--param", "EXTRA=5", "--param", "SEED=3", "--override", "optim.lr=1e-4"]
    assert pipeline.main(argv) == 1
    err = capsys.readouterr().err
    # In [6]: import, parameters, papermill's injected cell, run folder, assert, raise
    assert "02_b.ipynb failed in cell In [6]" in err and "ValueError: boom in b" in err
    run = runs / "r"
    state = json.loads((run / "pipeline.json").read_text())
    assert state["notebooks"]["01_a"]["status"] == "done"
    assert state["notebooks"]["02_b"]["status"] == "failed"
    # executed copies live in the run folder; the inputs are untouched (never executed in place)
    assert {p.name: p.read_bytes() for p in notebooks.glob("*.ipynb")} == sources
    executed_a = nbformat.read(run / "notebooks" / "01_a.ipynb", as_version=4)
    executed_b = nbformat.read(run / "notebooks" / "02_b.ipynb", as_version=4)
    assert executed_a.metadata.papermill.parameters["EXTRA"] == 5
    assert executed_a.metadata.papermill.parameters["INTERACTIVE"] is False
    assert executed_a.metadata.papermill.parameters["SEED"] == 3  # a standard name through --param
    assert executed_a.metadata.papermill.parameters["OVERRIDES"] == {"optim.lr": 1e-4}
    assert "EXTRA" not in executed_b.metadata.papermill.parameters  # passed only to notebooks declaring it
    assert (run / "count_a.txt").read_text() == "5"

    # a resume must keep the run's parameters
    assert pipeline.main(argv + ["--resume", "--preset", "paper"]) == 2
    assert "started with PRESET='cpu'" in capsys.readouterr().err

    write_notebook(notebooks / "02_b.ipynb", ['assert (run / "count_a.txt").exists()'])
    assert pipeline.main(argv + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert "01_a" in out and "skipped" in out
    assert (run / "count_a.txt").read_text() == "5", "the finished notebook ran again"
    state = json.loads((run / "pipeline.json").read_text())
    assert [state["notebooks"][n]["status"] for n in ("01_a", "02_b")] == ["done", "done"]


def test_select_notebooks_by_number_name_and_range(tmp_path):
    paths = [tmp_path / n for n in ("00_env.ipynb", "01_prep.ipynb", "10_train.ipynb", "20_eval.ipynb")]
    names = lambda chosen: [p.stem for p in chosen]  # noqa: E731
    assert names(pipeline.select_notebooks(paths, "20,00")) == ["00_env", "20_eval"]
    assert names(pipeline.select_notebooks(paths, ["10_train"])) == ["10_train"]
    assert names(pipeline.select_notebooks(paths, start="01", stop=10)) == ["01_prep", "10_train"]
    with pytest.raises(PipelineError, match="--only '3' matches no notebook"):
        pipeline.select_notebooks(paths, "3")


def test_param_values_are_yaml_typed():
    assert pipeline.parse_assignment("EPOCHS=3") == ("EPOCHS", 3)
    assert pipeline.parse_assignment("LR=1e-4") == ("LR", 1e-4)  # YAML 1.1 would say "1e-4"
    assert pipeline.parse_assignment("IDS=[0, 17]") == ("IDS", [0, 17])
    assert pipeline.parse_assignment("FLAG=false") == ("FLAG", False)
    assert pipeline.parse_assignment("NAME=a=b") == ("NAME", "a=b")
    with pytest.raises(PipelineError, match="KEY=VALUE"):
        pipeline.parse_assignment("EPOCHS")


def test_resolve_run_dir_names_and_latest(tmp_path):
    run = helpers.resolve_run_dir("mine", runs_root=tmp_path)
    assert run == tmp_path / "mine" and (run / "figures").is_dir()
    fresh = helpers.resolve_run_dir("", "cpu", "synthetic", runs_root=tmp_path)
    assert fresh.name.endswith("_cpu_synthetic")
    assert helpers.resolve_run_dir("", "cpu", "synthetic", latest=True, runs_root=tmp_path) == fresh
    with pytest.raises(PipelineError, match="no earlier run"):
        helpers.resolve_run_dir("", "paper", "CUHK-PEDES", latest=True, runs_root=tmp_path)
    with pytest.raises(PipelineError, match="plain folder name"):
        helpers.resolve_run_dir("../escape", runs_root=tmp_path)


def test_workbook_config_maps_standard_parameters():
    cfg = helpers.workbook_config("php", "cpu", "synthetic", "/tmp/d", {"optim.lr": 1e-4}, smoke=True, seed=7)
    assert cfg.model.arch == "php" and cfg.data.root == "/tmp/d" and cfg.train.seed == 7
    assert cfg.optim.lr == 1e-4 and cfg.train.device == "cpu" and cfg.train.progress == "lines"
    assert helpers.workbook_config("irra", "cpu", device="cuda").train.device == "cuda"


def test_summary_shows_headline_metrics(tmp_path):
    result = pipeline.PipelineResult(run_dir=tmp_path, notebooks=[pipeline.NotebookResult("20_evaluate", "done", 3.0)],
                                     metrics={"t2i": {"R1": 61.25, "R5": 80.0, "R10": 90.0, "mAP": 55.5, "mINP": 30.0},
                                              "i2t": {"R1": 70.0, "R5": 85.0, "R10": 95.0, "mAP": 50.0, "mINP": 20.0}})
    text = pipeline.format_summary(result)
    assert "t2i: R1 61.25" in text and "mAP 55.50" in text and "20_evaluate" in text


def test_headline_metrics_take_the_selected_checkpoint_of_php():
    trained = {"selection": {"policy": "val"}, "best": {"epoch": 3}}
    assert helpers.selected_checkpoint(trained) == "best"
    assert helpers.selected_checkpoint({"selection": {"policy": "last"}, "best": {"epoch": 3}}) == "last"
    assert helpers.selected_checkpoint({"selection": {"policy": "val"}, "best": None}) == "last"
    ev = {m: {w: {"t2i": {"R1": r}, "i2t": {"R1": r / 2}} for w, r in (("best", b), ("last", l))}
          for m, b, l in (("irra", 40.0, 38.0), ("php", 60.0, 62.0))}
    headline = helpers.headline_metrics(ev, {"irra": "best", "php": "last"})
    assert headline["t2i"] == {"R1": 62.0} and headline["headline"] == "php (last)"
    assert headline["models"]["irra"]["best"]["t2i"]["R1"] == 40.0 and headline["models"]["irra"]["selected"] == "best"
    only_irra = helpers.headline_metrics({"irra": ev["irra"]}, {"irra": "best"})
    assert only_irra["t2i"] == {"R1": 40.0}  # PHP not trained: the first evaluated model
    with pytest.raises(PipelineError, match="no evaluated model"):
        helpers.headline_metrics({}, {})


def test_checkpoint_selects_the_evaluation_and_inspection_notebooks(reference_dir, tmp_path):
    only, path = pipeline.checkpoint_notebooks(reference_dir / "irra_tiny")
    assert only == ["20", "30", "31", "33"] and path == str((reference_dir / "irra_tiny").resolve())
    only, _ = pipeline.checkpoint_notebooks(reference_dir / "php_tiny" / "best.pth")
    assert only == ["20", "30", "31", "32", "33", "40"]
    assert pipeline.checkpoint_notebooks(reference_dir / "irra_tiny", only="30")[0] == "30"  # --only wins
    with pytest.raises(PipelineError, match="missing.pth"):
        pipeline.checkpoint_notebooks(tmp_path / "missing.pth")
    args = pipeline.build_parser().parse_args(["--checkpoint", "x.pth"])
    assert args.checkpoint == "x.pth"
