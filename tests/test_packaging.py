"""Packaging and notebook hygiene: requirements in step, notebooks committed stripped, one parameters cell."""
from __future__ import annotations

import ast
import copy
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

from irra_core.pipeline import NOTEBOOK_GLOB, STANDARD_PARAMETERS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
#: the keys the Makefile adds to nbstripout's defaults (papermill provenance, execution timings, widget state)
STRIP_EXTRA_KEYS = "metadata.papermill cell.metadata.papermill cell.metadata.execution metadata.widgets"
#: the keys nbstripout strips by default (nbstripout 0.9 ``main``)
NBSTRIPOUT_DEFAULT_KEYS = ["metadata.signature", "metadata.widgets", "cell.metadata.collapsed",
                           "cell.metadata.ExecuteTime", "cell.metadata.execution", "cell.metadata.heading_collapsed",
                           "cell.metadata.hidden", "cell.metadata.scrolled"]
#: the standard parameters' documented defaults (docs/ARCHITECTURE.md, "Notebook parameters")
STANDARD_DEFAULTS = {"RUN_NAME": "", "PRESET": "cpu", "DATASET": "synthetic", "DATA_ROOT": "data", "OVERRIDES": {},
                     "SMOKE": False, "DEVICE": "auto", "SEED": 1, "RESUME": True, "INTERACTIVE": True}


def _normalise_requirement(req: str) -> str:
    req = re.sub(r"\s+", "", req.split("#")[0]).lower()
    name = re.match(r"[a-z0-9_.\-]+", req).group(0)
    return re.sub(r"[-_.]+", "-", name) + req[len(name):]


def test_environment_yml_pins_the_same_requirements_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip section"
    pip_reqs = [r for r in pip_sections[0] if not r.startswith("-")]
    assert "-e .[dev]" in pip_sections[0], "environment.yml must install the package itself with its dev extra"
    assert "python=3.11" in env["dependencies"]
    ours, theirs = sorted(map(_normalise_requirement, declared)), sorted(map(_normalise_requirement, pip_reqs))
    assert theirs == ours, (f"environment.yml and pyproject.toml differ: only in environment.yml "
                            f"{sorted(set(theirs) - set(ours))}, only in pyproject.toml {sorted(set(ours) - set(theirs))}")


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


def committed_notebooks() -> list[tuple[str, str]]:
    """``(path, text)`` of each tracked notebook as git stores it (the index: what a commit holds, after the
    clean filter), or the working files outside a git checkout."""
    if shutil.which("git") is None or _git("rev-parse", "--git-dir").returncode != 0:
        return [(str(p.relative_to(ROOT)), p.read_text()) for p in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    listed = _git("ls-files", "notebooks/*.ipynb").stdout.split()
    return [(path, _git("show", f":{path}").stdout) for path in listed]


NOTEBOOKS = committed_notebooks()
NUMBERED = [(path, text) for path, text in NOTEBOOKS if Path(path).match(NOTEBOOK_GLOB)]


def test_the_workbook_has_numbered_notebooks():
    assert NUMBERED, "no numbered notebooks are committed under notebooks/"


@pytest.mark.parametrize("path,text", NOTEBOOKS, ids=[p for p, _ in NOTEBOOKS])
def test_committed_notebook_is_stripped(path, text):
    nb = nbformat.reads(text, as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path} cell {index} has outputs; install the filter (make setup) and re-add"
            assert cell.execution_count is None, f"{path} cell {index} has an execution count"
        assert "papermill" not in cell.metadata, f"{path} cell {index} carries papermill metadata"
    assert "papermill" not in nb.metadata and "widgets" not in nb.metadata, f"{path}: executed-notebook metadata"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path}: kernelspec must be python3"
    # nbstripout itself finds nothing left to strip: what `nbstripout --verify` does, in process (a subprocess
    # per notebook costs seconds), with its default keys plus the Makefile's
    from nbstripout import strip_output

    original = nbformat.reads(text, as_version=nbformat.NO_CONVERT)
    stripped = strip_output(copy.deepcopy(original), keep_output=False, keep_count=False, keep_id=False,
                            extra_keys=NBSTRIPOUT_DEFAULT_KEYS + STRIP_EXTRA_KEYS.split())
    assert stripped == original, f"nbstripout would change {path}: commit it through the filter (make setup)"


def _write_tmp(text: str, folder: Path, path: str) -> Path:
    copy = folder / Path(path).name
    copy.write_text(text)
    return copy


def _code(cell) -> str:
    # IPython magics and shell escapes are not Python; none are expected, but they must not break parsing
    return "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))


@pytest.mark.parametrize("path,text", NUMBERED, ids=[p for p, _ in NUMBERED])
def test_numbered_notebook_has_one_standard_parameters_cell_and_no_definitions(path, text, tmp_path):
    nb = nbformat.reads(text, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path}: {len(tagged)} cells tagged 'parameters', expected exactly one"
    cell = nb.cells[tagged[0]]
    assert cell.cell_type == "code"
    assigned = {}
    for node in ast.parse(cell.source).body:
        assert isinstance(node, (ast.AnnAssign, ast.Assign)), \
            f"{path}: the parameters cell holds only assignments of literals (line {node.lineno})"
        target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
        # literals only: nothing derived in the parameters cell (papermill would not update it)
        assigned[target.id] = ast.literal_eval(node.value)
    missing = [name for name in STANDARD_PARAMETERS if name not in assigned]
    assert not missing, f"{path}: the parameters cell lacks the standard parameters {missing}"
    # papermill's own inspection (what the runner validates --param against) must see every one of them:
    # it skips any line holding a second '=', e.g. in a trailing comment
    seen = papermill.inspect_notebook(str(_write_tmp(text, tmp_path, path)))
    unseen = [name for name in assigned if name not in seen]
    assert not unseen, f"{path}: papermill cannot parse the parameter lines of {unseen} (a second '=' on the line?)"
    wrong = {k: assigned[k] for k, v in STANDARD_DEFAULTS.items() if assigned[k] != v or type(assigned[k]) is not type(v)}
    assert not wrong, f"{path}: standard parameter defaults differ from docs/ARCHITECTURE.md: {wrong}"
    for index, before in enumerate(nb.cells[:tagged[0]]):
        if before.cell_type == "code":
            body = ast.parse(_code(before)).body
            assert all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in body), \
                f"{path}: cell {index} comes before the parameters cell but is not only imports"
    for index, c in enumerate(nb.cells):
        if c.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(_code(c))):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), \
                f"{path}: cell {index} defines {type(node).__name__}; move it into irra_core"


def test_gitattributes_routes_notebooks_through_nbstripout():
    lines = (ROOT / ".gitattributes").read_text().splitlines()
    assert any(re.match(r"\*\.ipynb\s.*filter=nbstripout", line) for line in lines)


def test_makefile_setup_installs_the_filter_and_the_kernel():
    makefile = (ROOT / "Makefile").read_text()
    assert "nbstripout --install" in makefile
    assert "ipykernel install" in makefile and "irra-workbook" in makefile
    # tags must survive stripping: papermill finds the parameters cell by its tag
    assert "cell.metadata.tags" not in makefile


def test_readme_names_the_two_commands():
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md is not written yet")
    text = readme.read_text()
    assert "make workbook" in text and "make test" in text
