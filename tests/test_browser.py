"""The workbook as a researcher uses it: real JupyterLab in headless Chromium (marker ``browser``).

Papermill runs prove that the cells execute; these tests look at what a person sees. JupyterLab is
started from this environment (``tests/browser_lab.py``: free port, random token, temporary Jupyter
folders, always stopped) on parametrised copies of notebooks 30 and 32 that point at the session's smoke
run (``conftest.smoke``, shared with the notebook tests, which run first) with ``INTERACTIVE=True``.
Playwright drives the system Chromium (``apt-get install chromium``; never a downloaded browser); without
one the module skips with one line.

Checked: the launcher offers ``Python (irra-workbook)``; the ipywidgets front end is loaded and matches
ipywidgets; "Run All Cells" from the Run menu executes every cell without an error and every figure cell
shows an image; the retrieval explorer's image changes when another query is picked and when a sentence
is typed, the routing explorer's when the EFP layer changes; the browser console has no widget errors.
Screenshots and console logs go to ``outputs/browser/``. Timeouts: see ``browser_lab``.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from browser_lab import (KERNEL_DISPLAY_NAME, TIMEOUT, Console, LabServer, find_chromium, page_config, wait_for,
                         widget_frontend_diagnosis, widget_frontend_problem)

CHROMIUM = find_chromium()
if CHROMIUM is None:
    pytest.skip("browser tests: no Chromium found (apt-get install chromium, or set IRRA_CHROMIUM)",
                allow_module_level=True)

from playwright.sync_api import Page, sync_playwright  # noqa: E402

from irra_core.pipeline import KERNEL_MPLBACKEND, NOTEBOOK_GLOB  # noqa: E402

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob(NOTEBOOK_GLOB))
SHOTS = ROOT / "outputs" / "browser"
RETRIEVAL, ROUTING = "30_retrieval_gallery", "32_expert_routing"
KERNEL = "irra-workbook"
PROMPT = re.compile(r"^\[(\d+|\*| )\]:$")


# ----------------------------------------------------------------------------------------------------
# Fixtures: the notebooks, the server, the browser
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lab_root(smoke, tmp_path_factory) -> Path:
    """A folder with copies of notebooks 30 and 32 parametrised (papermill, prepare only) for the smoke run."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    smoke.execute_through(ROUTING, NOTEBOOKS)  # already done when the notebook tests ran first
    folder = tmp_path_factory.mktemp("lab")
    for stem in (RETRIEVAL, ROUTING):
        nb = parameterize_notebook(load_notebook_node(str(ROOT / "notebooks" / f"{stem}.ipynb")),
                                   {"RUN_NAME": smoke.name, "SMOKE": True, "INTERACTIVE": True,
                                    "DATA_ROOT": str(smoke.data)})
        nb.metadata.kernelspec = {"name": KERNEL, "display_name": KERNEL_DISPLAY_NAME, "language": "python"}
        nbformat.write(nb, folder / f"{stem}.ipynb")
    return folder


@pytest.fixture(scope="module")
def lab(lab_root, smoke, tmp_path_factory):
    """JupyterLab serving ``lab_root``; its kernels see the smoke run (IRRA_RUNS_DIR) and draw inline."""
    env = {"IRRA_RUNS_DIR": str(smoke.runs), "HF_HUB_OFFLINE": "1", "MPLBACKEND": KERNEL_MPLBACKEND}
    with LabServer(lab_root, tmp_path_factory.mktemp("lab-scratch"), env=env) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


class LabPage:
    """One browser page on the Lab server, with its console recorded."""

    def __init__(self, browser, lab: LabServer, name: str) -> None:
        self.lab, self.name = lab, name
        self.page: Page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.page.set_default_timeout(60_000)  # one click or lookup; long waits go through wait_for
        self.console = Console(self.page)

    def goto(self, path: str) -> None:
        self.page.goto(self.lab.page_url(path))

    def shot(self, locator, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        (locator or self.page).screenshot(path=str(path))
        return path

    def menu(self, top: str, item: str) -> None:
        """Click ``item`` in the menu-bar menu ``top`` (as a person would)."""
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{top}$")).click()
        self.page.locator(".lm-Menu-content .lm-Menu-itemLabel", has_text=re.compile(f"^{item}$")).click()

    def assert_no_widget_errors(self) -> None:
        self.console.save(SHOTS / f"console_{self.name}.log")
        errors = self.console.widget_errors()
        assert not errors, ("widget errors in the browser console: " + "; ".join(errors[:5]) + "\n"
                            + widget_frontend_diagnosis(page_config(self.page)))

    def close(self) -> None:
        self.console.save(SHOTS / f"console_{self.name}.log")
        self.page.close()


class LabNotebook(LabPage):
    """A notebook opened in Lab, run with Run ▸ Run All Cells and saved through the UI."""

    def __init__(self, browser, lab: LabServer, stem: str) -> None:
        super().__init__(browser, lab, stem)
        self.path = lab.root_dir / f"{stem}.ipynb"
        self.source = nbformat.read(self.path, as_version=4)
        self.goto(f"lab/tree/{stem}.ipynb?reset")
        self.page.wait_for_selector(".jp-NotebookPanel .jp-Cell")
        self.cells = self.page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
        wait_for(lambda: self.cells.count() == len(self.source.cells), 60,
                 f"{stem}: Lab shows all {len(self.source.cells)} cells", describe=self.describe)
        wait_for(self.kernel_idle, TIMEOUT, f"{stem}: kernel {KERNEL_DISPLAY_NAME!r} started, connected and idle",
                 describe=self.describe)
        self.saved: nbformat.NotebookNode | None = None

    def status_bar(self) -> str:
        return " ".join(self.page.locator("#jp-main-statusbar").all_inner_texts())

    def dialogs(self) -> list[str]:
        return [t.strip() for t in self.page.locator(".jp-Dialog").all_inner_texts()]

    def kernel_idle(self) -> bool:
        """The status bar reads 'Python (irra-workbook) | Idle' and no dialog asks for a kernel."""
        return f"{KERNEL_DISPLAY_NAME} | Idle" in self.status_bar() and not self.dialogs()

    def describe(self) -> str:
        path = self.shot(None, f"{self.name}_timeout")
        return (f"status bar {self.status_bar()!r}, dialogs {self.dialogs()}, prompts {self.prompts()}; "
                f"screenshot {path}")

    def prompts(self) -> list[str]:
        return [t.strip() for t in self.page.locator(".jp-NotebookPanel .jp-CodeCell .jp-InputPrompt").all_text_contents()]

    def run_all(self) -> None:
        """Run ▸ Run All Cells, wait until nothing is queued or running, then File ▸ Save Notebook and read it."""
        self.menu("Run", "Run All Cells")
        wait_for(lambda: any(p != "[ ]:" for p in self.prompts()), 60, f"{self.name}: Run All Cells started",
                 describe=self.describe)
        settled: list[bool] = []

        def finished() -> bool:  # no cell queued or running, kernel idle, twice in a row
            settled.append("[*]:" not in self.prompts() and self.kernel_idle())
            return len(settled) >= 2 and settled[-1] and settled[-2]

        wait_for(finished, TIMEOUT, f"{self.name}: every cell executed", interval=1.0, describe=self.describe)
        before = self.path.stat().st_mtime_ns
        self.menu("File", "Save Notebook")
        wait_for(lambda: self.path.stat().st_mtime_ns != before and
                 not self.page.locator(".lm-TabBar-tab.jp-mod-current.jp-mod-dirty").count(), 60,
                 f"{self.name}: notebook saved")
        self.saved = nbformat.read(self.path, as_version=4)

    def cell_index(self, needle: str) -> int:
        found = [i for i, c in enumerate(self.source.cells) if c.cell_type == "code" and needle in c.source]
        assert found, f"{self.name}: no code cell contains {needle!r}"
        return found[0]

    def explorer(self):
        """The explorer's widget box; fails naming the cause when the widget front end did not render it."""
        cell = self.cells.nth(self.cell_index(".widget("))
        box = cell.locator(".jp-OutputArea-output .widget-vbox").first
        try:
            box.wait_for(state="visible", timeout=60_000)
        except Exception:
            shown = " | ".join(cell.locator(".jp-OutputArea-output").all_inner_texts())[:300]
            self.shot(cell, f"{self.name}_explorer_broken")
            pytest.fail(f"{self.name}: the explorer widget did not render (the output shows {shown!r}): "
                        f"{widget_frontend_diagnosis(page_config(self.page))}", pytrace=False)
        return box


def explorer_image(box) -> str:
    """The data URL of the image in the explorer's Output area ('' while none is shown)."""
    images = box.locator(".widget-output img")
    return (images.first.get_attribute("src") or "") if images.count() else ""


def wait_for_new_image(box, before: str, what: str) -> str:
    return wait_for(lambda: (now := explorer_image(box)).startswith("data:image/png") and now != before and now,
                    TIMEOUT, f"{what}: the explorer's image changed")


@pytest.fixture(scope="module")
def lab_notebook(browser, lab):
    """``lab_notebook(stem)``: the notebook opened in Lab and run (once per module; a failure is not retried)."""
    opened: dict[str, LabNotebook] = {}
    failed: dict[str, str] = {}

    def get(stem: str) -> LabNotebook:
        if stem in failed:
            pytest.fail(f"{stem}: opening or running it in Lab failed in an earlier test: {failed[stem]}", pytrace=False)
        if stem not in opened:
            try:
                nb = LabNotebook(browser, lab, stem)
                opened[stem] = nb
                nb.run_all()
            except Exception as exc:
                failed[stem] = f"{type(exc).__name__}: {str(exc)[:500]}"
                raise
        return opened[stem]

    yield get
    for nb in opened.values():
        nb.close()


# ----------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------
@pytest.fixture
def launcher(browser, lab):
    """A fresh Lab page showing the launcher."""
    lp = LabPage(browser, lab, "launcher")
    lp.goto("lab?reset")
    lp.page.wait_for_selector(".jp-Launcher .jp-LauncherCard")
    yield lp
    lp.close()


def test_launcher_offers_project_kernel(launcher):
    section = launcher.page.locator(".jp-Launcher-section", has=launcher.page.locator(
        ".jp-Launcher-sectionTitle", has_text="Notebook"))
    labels = [t.strip() for t in section.locator(".jp-LauncherCard-label").all_inner_texts()]
    launcher.shot(None, "launcher")
    assert KERNEL_DISPLAY_NAME in labels, (
        f"the launcher's Notebook section offers {labels}, not {KERNEL_DISPLAY_NAME!r}: register the kernel "
        f"with `python -m ipykernel install --sys-prefix --name {KERNEL} --display-name '{KERNEL_DISPLAY_NAME}'` "
        f"(make setup does)")
    launcher.assert_no_widget_errors()


def test_widget_frontend_extension_loaded(launcher):
    """Lab's page config lists jupyterlab-manager, enabled, and jupyterlab_widgets matches ipywidgets."""
    problem = widget_frontend_problem(page_config(launcher.page))
    assert problem is None, problem


@pytest.mark.parametrize("stem", [RETRIEVAL, ROUTING])
def test_notebook_runs_in_lab(stem, lab_notebook):
    """Every cell ran, none shows an error, every figure cell shows its image(s), the explorer renders."""
    nb = lab_notebook(stem)
    nb.shot(None, f"{nb.name}_lab")
    saved = nb.saved
    code = [(i, c) for i, c in enumerate(saved.cells) if c.cell_type == "code"]
    errors = [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in code for o in c.outputs
              if o.output_type == "error"]
    assert not errors, f"{nb.name}: cells show errors in Lab: {errors}"
    not_run = [i for i, c in code if c.execution_count is None]
    assert not not_run, f"{nb.name}: cells {not_run} did not run (prompts {nb.prompts()})"
    prompts = nb.prompts()
    assert len(prompts) == len(code) and all(PROMPT.match(p) and p[1].isdigit() for p in prompts), (
        f"{nb.name}: Lab shows the prompts {prompts} for {len(code)} code cells")

    figure_cells = [i for i, c in code if "display(fig)" in c.source]
    assert len(figure_cells) >= 4, f"{nb.name}: expected several figure cells, found {figure_cells}"
    for i in figure_cells:
        saved_pngs = sum("image/png" in o.get("data", {}) for o in saved.cells[i].outputs)
        shown = nb.cells.nth(i).locator(".jp-OutputArea-output img[src^='data:image/png']")
        widths = [shown.nth(k).evaluate("img => img.naturalWidth") for k in range(shown.count())]
        assert saved_pngs >= 1 and len(widths) >= saved_pngs and all(w > 100 for w in widths), (
            f"{nb.name}: figure cell {i} shows {len(widths)} image(s) of widths {widths}, saved {saved_pngs} PNG "
            f"output(s):\n{saved.cells[i].source}")
    nb.explorer()
    nb.assert_no_widget_errors()


def opened_explorer(nb: LabNotebook):
    """The explorer's widget box, scrolled into view, and the data URL of the image it shows first."""
    box = nb.explorer()
    box.scroll_into_view_if_needed()
    return box, wait_for(lambda: explorer_image(box), TIMEOUT, f"{nb.name}: explorer image shown")


def test_retrieval_explorer_responds(lab_notebook):
    nb = lab_notebook(RETRIEVAL)
    box, first = opened_explorer(nb)
    nb.shot(box, f"{RETRIEVAL}_explorer_start")

    query = box.locator(".widget-text", has=nb.page.locator("label", has_text=re.compile("^query$"))).locator("input")
    start = int(query.input_value())
    query.fill(str(start + 1))
    query.press("Enter")
    picked = wait_for_new_image(box, first, f"{RETRIEVAL}: query {start} -> {start + 1}")
    nb.shot(box, f"{RETRIEVAL}_explorer_query")

    text = box.locator(".widget-text", has=nb.page.locator("label", has_text=re.compile("^free text$"))).locator("input")
    text.fill("a man in a blue shirt and black trousers carrying a red bag")
    box.locator("button", has_text=re.compile("^search$")).click()
    typed = wait_for_new_image(box, picked, f"{RETRIEVAL}: typed sentence")
    nb.shot(box, f"{RETRIEVAL}_explorer_typed")

    checkpoint = box.locator(".widget-dropdown select")
    options = checkpoint.locator("option").all_inner_texts()
    assert len(options) >= 2, f"{RETRIEVAL}: the checkpoint chooser offers only {options}"
    other = next(o for o in options if o != checkpoint.input_value())
    checkpoint.select_option(label=other)
    wait_for_new_image(box, typed, f"{RETRIEVAL}: checkpoint -> {other}")
    nb.shot(box, f"{RETRIEVAL}_explorer_checkpoint")
    assert len({first, picked, typed}) == 3
    nb.assert_no_widget_errors()


def test_routing_explorer_layer_changes_the_maps(lab_notebook):
    nb = lab_notebook(ROUTING)
    box, first = opened_explorer(nb)
    layer = box.locator(".widget-dropdown", has=nb.page.locator("label", has_text="EFP layer")).locator("select")
    options = layer.locator("option").all_inner_texts()
    assert len(options) >= 2, f"{ROUTING}: the EFP layer control offers {options}; the smoke preset needs 2+ EFP layers"
    nb.shot(box, f"{ROUTING}_explorer_layer{layer.input_value()}")
    other = options[-1] if layer.input_value() != options[-1] else options[0]
    layer.select_option(label=other)
    wait_for_new_image(box, first, f"{ROUTING}: EFP layer -> {other}")
    nb.shot(box, f"{ROUTING}_explorer_layer{other}")
    nb.assert_no_widget_errors()
