"""Shared test set-up: headless plotting, no hub downloads, small thread count, reference fixtures."""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = Path(os.environ.get("IRRA_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))


def pytest_collection_modifyitems(config, items):
    # the browser tests last: they reuse the smoke run the notebook tests finish, and a notebook failure
    # shows as such before a browser test trips over it
    items.sort(key=lambda item: "browser" in item.keywords)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing is a packaging error other tests report
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference``; tests that need it skip cleanly where it is absent."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference fixtures not found at {REFERENCE_DIR}")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


class SmokeRun:
    """One smoke run of the workbook for the session, under temporary ``runs`` and ``data`` roots.

    Notebook and browser tests share it: :meth:`execute_through` runs a notebook and every earlier one
    not finished yet (later notebooks read what earlier ones wrote), resuming the same run folder.
    """

    name = "smoke"

    def __init__(self, runs: Path, data: Path) -> None:
        self.runs, self.data = runs, data
        self.run_dir = runs / self.name

    def execute_through(self, notebook: str, notebooks: list[Path]) -> dict:
        """Run ``notebook`` (a stem) and the earlier ones of ``notebooks`` not done yet; the pipeline state."""
        from irra_core.pipeline import run_pipeline

        selected = [nb.stem for nb in notebooks if nb.stem <= notebook]
        run_pipeline(only=selected, run_name=self.name, resume=self.run_dir.exists(), smoke=True,
                     data_root=self.data, runs_dir=self.runs, stream=False, cell_timeout=600)
        return json.loads((self.run_dir / "pipeline.json").read_text())


@pytest.fixture(scope="session")
def smoke(tmp_path_factory) -> SmokeRun:
    """The session's smoke run (see :class:`SmokeRun`); nothing runs until a test asks for a notebook."""
    return SmokeRun(runs=tmp_path_factory.mktemp("runs"), data=tmp_path_factory.mktemp("data"))
