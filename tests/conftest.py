"""Shared test set-up: headless plotting, no hub downloads, small thread count, reference fixtures.

Parity tests (marker ``parity``) compare with outputs of the reference code. The small cases are committed under
``tests/fixtures/`` (``fixtures_dir``); only the tiny model checkpoints come from ``../shared/reference/``
(``reference_dir``, or ``$IRRA_REFERENCE_DIR``), and the tests needing them skip where that folder is absent.
The terminal summary ends with one line counting the parity tests that ran and those skipped for want of it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from irra_core.runtime import tune_cpu  # noqa: E402

# The suite trains and evaluates on the CPU in-process, as fit() and encode_split() do: tune the C allocator and
# flush subnormals to zero once for the whole session (runtime.py; several times faster CPU steps here).
tune_cpu()

ROOT = Path(__file__).resolve().parent.parent
FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
REFERENCE_DIR = Path(os.environ.get("IRRA_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))
REFERENCE_SKIP_REASON = f"reference checkpoints not found at {REFERENCE_DIR}"


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


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line: how many ``parity`` tests ran, how many skipped because the reference checkpoints are absent."""
    outcomes: dict[str, str] = {}
    for key in ("passed", "failed", "error", "skipped", "xfailed", "xpassed"):
        for report in terminalreporter.stats.get(key, []):
            if "parity" not in getattr(report, "keywords", {}):
                continue
            reason = report.longrepr[2] if key == "skipped" and isinstance(report.longrepr, tuple) else ""
            outcome = ("skipped_reference" if REFERENCE_SKIP_REASON in reason else "skipped_other") \
                if key == "skipped" else "ran"
            if outcomes.get(report.nodeid) != "ran":  # a test that ran and then failed in teardown counts once
                outcomes[report.nodeid] = outcome
    if not outcomes:
        return
    counts = {k: sum(v == k for v in outcomes.values()) for k in ("ran", "skipped_reference", "skipped_other")}
    line = (f"parity tests: {counts['ran']} ran, {counts['skipped_reference']} skipped for want of the reference "
            f"checkpoints (the tiny IRRA/PHP runs and the 1000 x 1000 ranking case in {REFERENCE_DIR}: "
            f"{'found' if REFERENCE_DIR.is_dir() else 'not found'})")
    if counts["skipped_other"]:
        line += f", {counts['skipped_other']} skipped for other reasons"
    terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``tests/fixtures``: the small reference cases committed with the repository (see its README)."""
    return FIXTURES_DIR


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference`` (the tiny IRRA/PHP checkpoints); tests that need it skip cleanly where it is absent."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip(REFERENCE_SKIP_REASON)
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (tiny models: on a 2-core machine thread hand-offs dominate), restored
    afterwards. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
