"""Notebooks 30-32 executed headless (papermill, smoke sizes) on a freshly trained tiny IRRA + PHP run."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = {
    "30_retrieval_gallery": ["30_topk_irra", "30_topk_php", "30_worst_irra", "30_worst_php", "30_free_text_irra",
                             "30_free_text_php", "30_first_hit_irra", "30_explorer"],
    "31_attention_maps": ["31_rollout_irra", "31_rollout_php", "31_text_to_patch_irra", "31_crfm_php"],
    "32_expert_routing": ["32_expert_load", "32_routing_entropy", "32_patch_experts", "32_word_experts",
                          "32_aux_vs_floor", "32_routing_drift", "32_aux_over_training", "32_explorer"],
}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A run folder with `irra/` and `php/` trained by the engine in smoke mode (what notebooks 10/11 write)."""
    from irra_core.engine import fit
    from irra_core.pipeline import workbook_config

    runs = tmp_path_factory.mktemp("runs")
    data = tmp_path_factory.mktemp("data")
    for arch in ("irra", "php"):
        cfg = workbook_config(arch, "cpu", "synthetic", data_root=str(data), smoke=True)
        fit(cfg, runs / "smoke" / arch)
    return runs, data


@pytest.mark.notebooks
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_inspection_notebook_runs_and_writes_its_figures(name, smoke_run, monkeypatch):
    import papermill as pm

    runs, data = smoke_run
    monkeypatch.setenv("IRRA_RUNS_DIR", str(runs))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # figures into the notebook
    out = runs / "smoke" / "notebooks" / f"{name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(out), kernel_name="python3", cwd=str(ROOT),
                        parameters=dict(RUN_NAME="smoke", SMOKE=True, INTERACTIVE=False, DATA_ROOT=str(data)),
                        progress_bar=False, execution_timeout=300)
    figures = runs / "smoke" / "figures"
    for stem in EXPECTED[name]:
        png = figures / f"{stem}.png"
        assert png.exists(), f"{name} did not write {png.name}"
        with Image.open(png) as im:
            assert im.size[0] > 200 and im.size[1] > 100, f"{png.name} is {im.size}"
            assert len(np.unique(np.asarray(im.convert("L")))) > 20, f"{png.name} looks blank"
    executed = nbformat.read(out, as_version=4)
    shown = sum("image/png" in o.get("data", {}) for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert shown >= len(EXPECTED[name]), f"{name}: only {shown} figures displayed in the executed notebook"
