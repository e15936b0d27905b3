"""JupyterLab in headless Chromium for the browser tests: the server, the page, the waits, the diagnoses.

* :class:`LabServer` starts ``jupyter lab`` from the running interpreter's environment (the project's
  ``.venv``) on 127.0.0.1 with a free port and a random token, in temporary config, data, runtime,
  settings and workspace folders (nothing of the user's Jupyter set-up is read or written), waits for
  ``/api/status`` with a bounded wait and always stops it.
* :class:`Console` records the browser console, page errors and failed requests, and names the ones that
  mean a broken widget front end.
* :func:`widget_frontend_diagnosis` turns "the widget did not render" into its cause: the front-end
  extension ``@jupyter-widgets/jupyterlab-manager`` missing, disabled, or of a version that does not match
  the installed ipywidgets.

Chromium comes from the system (``apt-get install chromium``): :func:`find_chromium` looks at
``IRRA_CHROMIUM`` and then ``PATH``; Playwright only drives it and never downloads a browser.

Environment knobs (seconds): ``IRRA_BROWSER_START_TIMEOUT`` (Lab start-up, default 180) and
``IRRA_BROWSER_TIMEOUT`` (any other wait: a notebook's run-all, one widget update; default 600).
``IRRA_BROWSER_DISABLE_EXTENSIONS`` (comma-separated extension names) writes them as disabled into the
temporary ``labconfig/page_config.json``, as ``jupyter labextension disable --level=user`` would: it exists
only to demonstrate that the suite names a broken widget front end.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

WIDGET_EXTENSION = "@jupyter-widgets/jupyterlab-manager"
KERNEL_DISPLAY_NAME = "Python (irra-workbook)"
#: console text that means a widget could not be shown (ipywidgets' manager, Lab's module loader)
WIDGET_ERROR_PATTERNS = (
    r"Error displaying widget", r"model not found", r"Could not create (a )?(model|view)",
    r"Class \S+ not found in module", r"Failed to (fetch|load) (dynamically imported )?module",
    r"Loading chunk \S+ failed", r"ChunkLoadError", r"No version of module \S+ is registered",
    r"Unsatisfied version", r"Error loading (federated )?extension", r"widget manager",
)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def timeout_s(name: str, default: float) -> float:
    """A positive number of seconds from the environment variable ``name``; ``default`` when unset."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be positive")
    return value


START_TIMEOUT = timeout_s("IRRA_BROWSER_START_TIMEOUT", 180)
TIMEOUT = timeout_s("IRRA_BROWSER_TIMEOUT", 600)


def find_chromium() -> str | None:
    """The system Chromium: ``IRRA_CHROMIUM`` if set (must exist), else the first of CHROMIUM_NAMES on PATH."""
    given = os.environ.get("IRRA_CHROMIUM")
    if given:
        if not (Path(given).is_file() and os.access(given, os.X_OK)):
            raise FileNotFoundError(f"IRRA_CHROMIUM={given!r} is not an executable file")
        return given
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.5,
             describe: Callable[[], str] | None = None):
    """Poll ``predicate`` until it returns something truthy (returned); TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{describe()}" if describe else ""
            raise TimeoutError(f"{what}: not reached within {timeout:.0f} s (raise IRRA_BROWSER_TIMEOUT or "
                               f"IRRA_BROWSER_START_TIMEOUT on a slow machine){extra}")
        time.sleep(interval)


@dataclass
class LabServer:
    """A ``jupyter lab`` process serving ``root_dir``; use as a context manager (stopped on exit)."""

    root_dir: Path
    scratch: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def page_url(self, path: str = "lab") -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.url}/{path}{sep}token={self.token}"

    @property
    def log_path(self) -> Path:
        return self.scratch / "jupyter-lab.log"

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def command(self) -> list[str]:
        jupyter = Path(sys.executable).parent / "jupyter"  # the same environment as this interpreter
        if not jupyter.exists():
            raise FileNotFoundError(f"{jupyter} not found: install the project (make setup) so that the "
                                    f"environment running pytest has JupyterLab")
        return [str(jupyter), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
                "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={self.root_dir}",
                f"--LabApp.user_settings_dir={self.scratch / 'lab-settings'}",
                f"--LabApp.workspaces_dir={self.scratch / 'lab-workspaces'}",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                "--LabApp.news_url=None", "--LabApp.extension_manager=readonly"] + (
                    ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])  # CI runs as root

    def environment(self) -> dict[str, str]:
        dirs = {"JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data", "JUPYTER_RUNTIME_DIR": "runtime",
                "IPYTHONDIR": "ipython"}
        env = {**os.environ, **{k: str(self.scratch / v) for k, v in dirs.items()}, **self.env}
        env.pop("JUPYTER_PATH", None)
        env.pop("JUPYTERLAB_SETTINGS_DIR", None)
        env.pop("JUPYTERLAB_WORKSPACES_DIR", None)
        return env

    def _write_settings(self) -> None:
        """No "official Jupyter news?" toast over the page (the user-level setting, in the scratch folder)."""
        folder = self.scratch / "lab-settings" / "@jupyterlab" / "apputils-extension"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))

    def _write_disabled_extensions(self) -> None:
        names = [n.strip() for n in os.environ.get("IRRA_BROWSER_DISABLE_EXTENSIONS", "").split(",") if n.strip()]
        if names:
            labconfig = self.scratch / "config" / "labconfig"
            labconfig.mkdir(parents=True, exist_ok=True)
            (labconfig / "page_config.json").write_text(
                json.dumps({"disabledExtensions": {n: True for n in names}}, indent=1))

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with code {self.proc.returncode} during start-up; "
                               f"its log ({self.log_path}):\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def start(self, timeout: float = START_TIMEOUT) -> "LabServer":
        for sub in ("config", "data", "runtime", "ipython", "lab-settings", "lab-workspaces"):
            (self.scratch / sub).mkdir(parents=True, exist_ok=True)
        self._write_settings()
        self._write_disabled_extensions()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), cwd=self.root_dir, env=self.environment(),
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(self._ready, timeout, f"jupyter lab on {self.url} answering /api/status",
                     describe=lambda: f"its log ({self.log_path}):\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise
        return self

    def api(self, path: str) -> object:
        with urllib.request.urlopen(f"{self.url}/api/{path}?token={self.token}", timeout=30) as r:
            return json.loads(r.read())

    def stop(self, grace: float = 30) -> None:
        """SIGTERM (the server shuts its kernels down), then SIGKILL to the process group after ``grace`` s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace)

    def __enter__(self) -> "LabServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Console:
    """Console messages, uncaught page errors and failed requests of one Playwright page."""

    def __init__(self, page) -> None:
        self.entries: list[str] = []
        page.on("console", lambda m: self.entries.append(f"console.{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.entries.append(f"pageerror: {e}"))
        page.on("requestfailed", lambda r: self.entries.append(f"requestfailed: {r.url} ({r.failure})"))
        page.on("response", lambda r: r.status >= 400 and self.entries.append(f"http {r.status}: {r.url}"))

    def widget_errors(self) -> list[str]:
        """Entries that mean a widget could not be shown (WIDGET_ERROR_PATTERNS, failed .js loads)."""
        pattern = re.compile("|".join(WIDGET_ERROR_PATTERNS), re.IGNORECASE)
        script = re.compile(r"\.js(\?\S*)?( |$)")  # a JavaScript module, not .json
        return [e for e in self.entries if pattern.search(e) or (
            e.startswith(("http ", "requestfailed:")) and script.search(e) and "ERR_ABORTED" not in e)]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.entries) + "\n")


def page_config(page) -> dict:
    """JupyterLab's page configuration (the ``jupyter-config-data`` script of the loaded page)."""
    return page.evaluate("() => JSON.parse(document.getElementById('jupyter-config-data').textContent)")


def _installed_extension_version(name: str) -> str | None:
    from jupyter_core.paths import jupyter_path

    for folder in jupyter_path("labextensions"):
        package = Path(folder) / name / "package.json"
        if package.exists():
            return json.loads(package.read_text()).get("version")
    return None


def widget_frontend_problem(config: dict | None) -> str | None:
    """Why ipywidgets cannot render in this Lab, as one sentence naming the cause and the fix; None if no cause is seen.

    ``config`` is :func:`page_config` of the loaded page (None when unknown). Checks, in order: the
    extension disabled in the page config, absent from the federated extensions Lab loaded, the
    Python package ``jupyterlab_widgets`` missing or outside the range ipywidgets requires.
    """
    from importlib.metadata import PackageNotFoundError, requires, version

    from packaging.requirements import Requirement

    try:
        ipywidgets = version("ipywidgets")
        wanted = next((Requirement(r) for r in requires("ipywidgets") or []
                       if Requirement(r).name.replace("_", "-") == "jupyterlab-widgets"), None)
    except PackageNotFoundError:
        return "ipywidgets is not installed in the kernel's environment: pip install -e '.[dev]' (make setup)"
    spec = f"jupyterlab_widgets{wanted.specifier}" if wanted else "jupyterlab_widgets"
    fix = f"install {spec} matching ipywidgets {ipywidgets} (pip install '{spec}')"
    head = f"ipywidgets front-end extension {WIDGET_EXTENSION} not loaded"
    if config is not None:
        disabled = config.get("disabledExtensions") or []
        disabled = [k for k, v in disabled.items() if v] if isinstance(disabled, dict) else list(disabled)
        if any(d == WIDGET_EXTENSION or d.startswith(WIDGET_EXTENSION + ":") for d in disabled):
            return (f"{head}: it is disabled in JupyterLab's page config; enable it with "
                    f"`jupyter labextension enable {WIDGET_EXTENSION}`")
        federated = {e.get("name") for e in config.get("federated_extensions", [])}
        if WIDGET_EXTENSION not in federated:
            return f"{head}: JupyterLab found no such extension; {fix}"
    try:
        installed = version("jupyterlab_widgets")
    except PackageNotFoundError:
        return f"{head}: jupyterlab_widgets is not installed; {fix}"
    if wanted is not None and installed not in wanted.specifier:
        return f"{head}: jupyterlab_widgets {installed} does not match ipywidgets {ipywidgets}; {fix}"
    return None


def widget_frontend_diagnosis(config: dict | None) -> str:
    """:func:`widget_frontend_problem`, or where no cause is seen, a pointer to the console log."""
    from importlib.metadata import version

    return widget_frontend_problem(config) or (
        f"ipywidgets front end not rendering although jupyterlab_widgets {version('jupyterlab_widgets')} "
        f"(front end {_installed_extension_version(WIDGET_EXTENSION)}) matches ipywidgets {version('ipywidgets')}; "
        f"see the browser console log")
