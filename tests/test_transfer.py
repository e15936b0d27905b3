"""The transfer matrix: its tables, dataset resolution, the command and the notebook at smoke sizes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from irra_core.cli import UserError, run_cli
from irra_core.transfer import evaluation_config, main, resolve_datasets, transfer_matrix, transfer_summary

ROOT = Path(__file__).resolve().parent.parent


def _record(r1, low=None, high=None):
    record = {"t2i": {"R1": r1, "mAP": r1 / 2}}
    if low is not None:
        record["ci"] = {"t2i": {"R1": [low, high]}}
    return record


def test_transfer_matrix_rows_are_sources_and_columns_targets():
    records = {("A", "A"): _record(50.0, 40, 60), ("A", "B"): _record(20.0), ("B", "A"): _record(10.0),
               ("B", "B"): _record(45.0)}
    frame = transfer_matrix(records)
    assert list(frame.index) == ["A", "B"] and list(frame.columns) == ["A", "B"]
    assert frame.loc["A", "B"] == 20.0 and frame.loc["B", "A"] == 10.0
    assert transfer_matrix(records, "mAP").loc["B", "B"] == 22.5
    rows = transfer_summary(records)
    assert [r["in_domain"] for r in rows] == [True, False, False, True]
    assert rows[0]["R1_ci"] == [40, 60] and "R1_ci" not in rows[1]


def test_resolve_datasets(tmp_path):
    assert resolve_datasets("auto", tmp_path) == ["synthetic-CUHK-PEDES", "synthetic-ICFG-PEDES", "synthetic-RSTPReid"]
    assert resolve_datasets("synthetic-RSTPReid, synthetic-RSTPReid", tmp_path) == ["synthetic-RSTPReid"]
    with pytest.raises(UserError, match="unknown dataset 'MSMT'"):
        resolve_datasets("MSMT", tmp_path)
    with pytest.raises(UserError, match="names RSTPReid but it is not under"):
        resolve_datasets(["RSTPReid"], tmp_path)
    (tmp_path / "RSTPReid").mkdir()
    (tmp_path / "RSTPReid" / "data_captions.json").write_text("[]")
    assert "RSTPReid" in resolve_datasets("auto", tmp_path)


def test_transfer_command_reports_errors_in_one_paragraph(tmp_path, capsys):
    assert run_cli(main, ["--datasets", "CUHK-PEDES", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --datasets names CUHK-PEDES") and "Traceback" not in err


@pytest.mark.slow
def test_transfer_command_smoke(tmp_path, capsys):
    out = tmp_path / "out"
    code = run_cli(main, ["--smoke", "--datasets", "synthetic-CUHK-PEDES,synthetic-ICFG-PEDES", "--out", str(out),
                          "--data-root", str(tmp_path / "data")])
    assert code == 0
    report = json.loads((out / "transfer.json").read_text())
    assert report["datasets"] == ["synthetic-CUHK-PEDES", "synthetic-ICFG-PEDES"]
    cells = {(c["source"], c["target"]): c for c in report["cells"]}
    assert len(cells) == 4 and cells[("synthetic-ICFG-PEDES", "synthetic-ICFG-PEDES")]["in_domain"]
    for cell in cells.values():
        assert cell["R1_ci"][0] <= cell["R1"] <= cell["R1_ci"][1]
    # the ICFG-format source has no val split: its last epoch is used, nothing is selected on test
    icfg = json.loads((out / "train" / "synthetic-ICFG-PEDES" / "metrics.json").read_text())
    assert icfg["selection"]["policy"] == "last"
    for name in ("transfer_R1.csv", "transfer_mAP.csv", "transfer_R1.png"):
        assert (out / name).exists()
    assert "t2i R1 (rows: trained on" in capsys.readouterr().out


@pytest.mark.notebooks
def test_transfer_notebook_smoke(tmp_path):
    from irra_core.pipeline import run_pipeline

    run_pipeline(notebooks_dir=ROOT / "notebooks" / "transfer", run_name="transfer", smoke=True,
                 data_root=tmp_path / "data", runs_dir=tmp_path / "runs", stream=False, cell_timeout=600,
                 params={"TRANSFER_DATASETS": "synthetic-CUHK-PEDES,synthetic-RSTPReid"})
    run_dir = tmp_path / "runs" / "transfer"
    state = json.loads((run_dir / "pipeline.json").read_text())
    assert state["notebooks"]["50_transfer_matrix"]["status"] == "done"
    assert (run_dir / "figures" / "50_transfer_R1.png").stat().st_size > 10_000
    matrix = (run_dir / "transfer" / "transfer_R1.csv").read_text().splitlines()
    assert matrix[0].split(",")[1:] == ["synthetic-CUHK-PEDES", "synthetic-RSTPReid"] and len(matrix) == 3


def test_a_synthetic_target_is_evaluated_on_its_own_test_split():
    from irra_core.config import load_config

    source = load_config("irra-cpu", {"data.dataset": "synthetic", "data.synthetic_seed": 0}, smoke=True)
    target = load_config("irra-cpu", {"data.dataset": "synthetic", "data.synthetic_seed": 1,
                                      "data.synthetic_format": "ICFG-PEDES", "data.synthetic_test_images_per_id": 7,
                                      "data.synthetic_test_captions_per_image": 2, "data.synthetic_eval_identities": 5,
                                      "data.img_size": [64, 32]}, smoke=True)
    eval_cfg = evaluation_config(source, target)
    for key in ("synthetic_seed", "synthetic_format", "synthetic_test_images_per_id",
                "synthetic_test_captions_per_image", "synthetic_eval_identities"):
        assert getattr(eval_cfg.data, key) == getattr(target.data, key), key
    assert list(eval_cfg.data.img_size) == list(source.data.img_size)  # the source model's input size stays
    assert eval_cfg.data.text_length == source.data.text_length
    assert eval_cfg.model == source.model and source.data.synthetic_seed == 0  # the source config is not touched
