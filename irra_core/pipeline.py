"""The workbook runner: execute the numbered notebooks headless with papermill.

``python -m irra_core.pipeline`` (what ``make workbook`` runs) executes ``notebooks/NN_*.ipynb`` in order
into ``outputs/runs/<run-name>/notebooks/`` (never in place), with an explicit kernel and the project
root as working directory, and ends with a summary of where everything is and the headline metrics::

    python -m irra_core.pipeline                               # CPU presets on the synthetic set
    python -m irra_core.pipeline --preset paper --dataset CUHK-PEDES --data-root /data --device cuda
    python -m irra_core.pipeline --from 10 --to 21 --override optim.lr=1e-4 --param EPOCHS=3
    python -m irra_core.pipeline --run-name my-run --resume    # skips the notebooks that finished
    python -m irra_core.pipeline --list                        # notebooks and their parameters
    python -m irra_core.pipeline --checkpoint logs/CUHK-PEDES/irra/  # evaluate + inspect a released model

Papermill only *warns* about a parameter a notebook does not declare; here such a name is an error,
checked with ``papermill.inspect_notebook`` before anything runs, as are the config overrides and the
dataset's folder (so a call that cannot start leaves no run folder). Such errors print one ``error: ...``
paragraph and exit 2; a notebook that fails exits 1. ``--smoke`` shrinks sizes only: the dataset named
with ``--dataset`` is kept (its first identities; the synthetic set when none is named). A failing cell stops the run with an
error naming the notebook and the cell. The run folder keeps a small ``pipeline.json`` (written
atomically) recording which notebooks finished, so ``--resume`` re-runs only what is missing or failed.

The notebooks' own helpers (:func:`~irra_core.workbook.resolve_run_dir`,
:func:`~irra_core.workbook.workbook_config`, ...) live in :mod:`irra_core.workbook`. Papermill and
jupyter_client are imported lazily.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import yaml

from irra_core import paths
from irra_core.datasets import DATASET_CHOICES
from irra_core.io_utils import atomic_write_json, read_json
from irra_core.workbook import PipelineError, default_run_name

class NotebookFailed(PipelineError):
    """A notebook raised while running (exit status 1); the message names it, the cell and the executed copy."""


#: the parameters every numbered notebook declares in its one ``parameters`` cell (docs/ARCHITECTURE.md)
STANDARD_PARAMETERS = ("RUN_NAME", "PRESET", "DATASET", "DATA_ROOT", "OVERRIDES", "SMOKE", "DEVICE", "SEED",
                       "RESUME", "INTERACTIVE")
#: the runner flag that sets each standard parameter; ``--param NAME=...`` may set the same ones too
FLAG_FOR = {"RUN_NAME": "--run-name", "PRESET": "--preset", "DATASET": "--dataset", "DATA_ROOT": "--data-root",
            "OVERRIDES": "--override", "SMOKE": "--smoke", "DEVICE": "--device", "SEED": "--seed",
            "RESUME": "--resume", "INTERACTIVE": "(always False in headless runs)"}
#: standard parameters only the runner decides: the run folder, resumption and headless widgets
RUNNER_ONLY = ("RUN_NAME", "RESUME", "INTERACTIVE")
#: parameters that must agree between a run and its ``--resume`` (DEVICE may change, e.g. to a GPU box)
RESUME_MUST_MATCH = ("PRESET", "DATASET", "DATA_ROOT", "OVERRIDES", "SMOKE", "SEED")
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
STATE_FILE = "pipeline.json"
DEFAULT_KERNEL = "irra-workbook"
#: ipykernel uses the inline backend only when MPLBACKEND is unset; ``make`` exports Agg for the tests,
#: which would leave the executed notebooks without figures, so the kernel gets the inline one explicitly.
KERNEL_MPLBACKEND = "module://matplotlib_inline.backend_inline"
DEVICES = ("auto", "cpu", "cuda")


# --------------------------------------------------------------------------------------------------
# Notebook discovery and parameters
# --------------------------------------------------------------------------------------------------
def discover_notebooks(notebooks_dir: str | Path | None = None) -> list[Path]:
    """The numbered notebooks ``NN_*.ipynb`` of a folder, in order."""
    folder = Path(notebooks_dir) if notebooks_dir is not None else paths.project_root() / "notebooks"
    if not folder.is_dir():
        raise PipelineError(f"notebook folder {folder} does not exist")
    return sorted(folder.glob(NOTEBOOK_GLOB))


def _number(path: Path) -> int:
    return int(path.name[:2])


def select_notebooks(notebooks: Sequence[Path], only: Sequence[str] | str | None = None,
                     start: str | int | None = None, stop: str | int | None = None) -> list[Path]:
    """Subset of ``notebooks``: ``only`` numbers or names (``"00,01"``, ``["20_evaluate"]``) and/or the
    inclusive number range ``start``..``stop``. An ``only`` entry that matches nothing is an error."""
    chosen = list(notebooks)
    if only:
        tokens = [t.strip() for t in (only.split(",") if isinstance(only, str) else only) if str(t).strip()]
        picked: list[Path] = []
        for token in tokens:
            hits = [nb for nb in chosen if nb.stem == token or nb.name == token or nb.name.startswith(f"{token}_")]
            if not hits:
                raise PipelineError(f"--only {token!r} matches no notebook; available: {[nb.stem for nb in chosen]}")
            picked += [nb for nb in hits if nb not in picked]
        chosen = sorted(picked)
    if start is not None:
        chosen = [nb for nb in chosen if _number(nb) >= int(start)]
    if stop is not None:
        chosen = [nb for nb in chosen if _number(nb) <= int(stop)]
    return chosen


def inspect_parameters(notebooks: Sequence[Path]) -> dict[str, dict[str, dict]]:
    """``{notebook stem: {parameter: {name, inferred_type_name, default, help}}}`` via papermill.

    Raises:
        PipelineError: a notebook has no ``parameters`` cell or lacks standard parameters.
    """
    import papermill as pm

    declared = {}
    for nb in notebooks:
        params = pm.inspect_notebook(str(nb))
        missing = [name for name in STANDARD_PARAMETERS if name not in params]
        if missing:
            raise PipelineError(f"{nb}: the cell tagged 'parameters' lacks the standard parameters {missing} "
                                f"(see docs/ARCHITECTURE.md 'Notebook parameters')")
        declared[nb.stem] = params
    return declared


def parse_value(text: str) -> Any:
    """A ``--param`` value, read as YAML; ``1e-4`` (a string in YAML 1.1) becomes a float."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PipelineError(f"cannot read {text!r} as YAML: {exc}") from exc
    if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value.strip()):
        return float(value)
    return value


def parse_assignment(text: str, flag: str = "--param") -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> ``(KEY, parsed VALUE)``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise PipelineError(f"{flag} expects KEY=VALUE, got {text!r}")
    return key.strip(), parse_value(value)


_TYPE_CHECKS: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,),
                                            "dict": (dict,), "list": (list,)}


def check_extra_parameters(declared: Mapping[str, Mapping[str, dict]], extra: Mapping[str, Any]) -> None:
    """Each notebook-specific ``--param`` must be declared by at least one selected notebook and fit
    the declared type annotation where there is one (standard names are split off beforehand)."""
    for name, value in extra.items():
        if name in STANDARD_PARAMETERS:
            raise PipelineError(f"--param {name}=... is a standard parameter; use {FLAG_FOR[name]}")
        owners = {nb: params[name] for nb, params in declared.items() if name in params}
        if not owners:
            known = sorted({p for params in declared.values() for p in params} - set(STANDARD_PARAMETERS))
            raise PipelineError(f"unknown parameter {name!r}: no selected notebook declares it "
                                f"(selected: {sorted(declared)}; their own parameters: {known})")
        for nb, info in owners.items():
            allowed = _TYPE_CHECKS.get(info.get("inferred_type_name", "None"))
            bad_bool = isinstance(value, bool) and allowed is not None and bool not in allowed
            if allowed is not None and (not isinstance(value, allowed) or bad_bool):
                raise PipelineError(f"--param {name}={value!r} ({type(value).__name__}) does not fit {nb}'s "
                                    f"declaration '{name}: {info['inferred_type_name']}'")


_STANDARD_TYPES = {"PRESET": str, "DATASET": str, "DATA_ROOT": str, "SMOKE": bool, "DEVICE": str, "SEED": int}


def _check_standard_type(name: str, value: Any) -> None:
    wanted = _STANDARD_TYPES[name]
    if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
        raise PipelineError(f"--param {name}={value!r} must be of type {wanted.__name__}")


def choose_kernel(name: str | None = None) -> tuple[str, str | None]:
    """The kernel to run with: ``name``, else ``IRRA_KERNEL``, else ``irra-workbook`` (registered by
    ``make setup``); ``python3`` when that kernelspec is missing. Returns ``(kernel, note or None)``."""
    from jupyter_client.kernelspec import KernelSpecManager

    wanted = name or os.environ.get("IRRA_KERNEL") or DEFAULT_KERNEL
    specs = KernelSpecManager().find_kernel_specs()
    if wanted in specs:
        return wanted, None
    if "python3" in specs or wanted == "python3":
        return "python3", (f"kernel {wanted!r} is not registered (make setup registers it); using 'python3' "
                           f"({sys.executable})")
    raise PipelineError(f"neither kernel {wanted!r} nor 'python3' is registered; run `make setup` or "
                        f"`python -m ipykernel install --sys-prefix --name {DEFAULT_KERNEL}`")


# --------------------------------------------------------------------------------------------------
# Run state
# --------------------------------------------------------------------------------------------------
@dataclass
class NotebookResult:
    """What happened to one notebook in this invocation."""

    name: str
    status: str  # done | skipped (finished earlier) | failed | not run
    duration_s: float = 0.0
    output: Path | None = None
    error: str = ""


@dataclass
class PipelineResult:
    run_dir: Path
    notebooks: list[NotebookResult] = field(default_factory=list)
    metrics: dict | None = None
    kernel: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status in ("done", "skipped") for r in self.notebooks)


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def _load_state(run_dir: Path) -> dict:
    path = run_dir / STATE_FILE
    return read_json(path, "pipeline state") if path.exists() else {}


@contextlib.contextmanager
def _kernel_environment(runs_root: Path) -> Iterator[None]:
    """Environment the kernel inherits: where runs live, no hub downloads, inline figures."""
    wanted = {"IRRA_RUNS_DIR": str(runs_root), "HF_HUB_OFFLINE": "1", "MPLBACKEND": KERNEL_MPLBACKEND,
              "PYTHONUNBUFFERED": "1"}
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _describe_failure(nb: Path, exc: BaseException, output: Path) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        first_line = (exc.source or "").strip().splitlines()[:1]
        return (f"notebook {nb.name} failed in cell In [{exc.exec_count}] (cell #{exc.cell_index}"
                f"{': ' + first_line[0] if first_line else ''}): {exc.ename}: {exc.evalue}\n"
                f"  executed copy with the traceback: {output}")
    return f"notebook {nb.name} did not complete: {type(exc).__name__}: {exc}\n  partial copy: {output}"


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
def run_pipeline(*, dataset: str = "synthetic", data_root: str | Path | None = None, preset: str = "cpu",
                 run_name: str | None = None, params: Mapping[str, Any] | None = None,
                 overrides: Mapping[str, Any] | None = None, only: Sequence[str] | str | None = None,
                 start: str | int | None = None, stop: str | int | None = None, resume: bool = False,
                 smoke: bool = False, device: str = "auto", seed: int = 1,
                 notebooks_dir: str | Path | None = None, runs_dir: str | Path | None = None,
                 kernel: str | None = None, cell_timeout: int | None = None, stream: bool = True,
                 echo: Callable[[str], None] = print, checkpoint: str | Path | None = None) -> PipelineResult:
    """Execute the selected numbered notebooks into ``<runs_dir>/<run_name>/notebooks/``.

    Args mirror the command-line flags (see ``python -m irra_core.pipeline --help``); ``params`` are
    notebook-specific parameters (``--param``), ``overrides`` dotted config keys merged into each
    notebook's ``OVERRIDES``. ``checkpoint`` (``--checkpoint``) runs the evaluation and inspection notebooks on
    an existing checkpoint without training (:func:`checkpoint_notebooks`). ``stream`` echoes the notebooks' stdout/stderr (training progress lines)
    to this process's terminal.

    Returns:
        A :class:`PipelineResult`; ``result.ok`` is True when every selected notebook finished.

    Raises:
        PipelineError: bad flags or parameters, an existing run folder without ``resume``, or a
            notebook that failed (the message names it and the cell; the state file records it).
    """
    extra = dict(params or {})
    given = {"DATASET": dataset, "DATA_ROOT": data_root, "PRESET": preset, "SMOKE": smoke, "DEVICE": device,
             "SEED": seed}
    given, overrides = _standard_values(given, extra, overrides)
    if checkpoint:
        only, extra["CHECKPOINT_PATH"] = checkpoint_notebooks(checkpoint, only, start, stop)
    notebooks = select_notebooks(discover_notebooks(notebooks_dir), only, start, stop)
    if not notebooks:
        raise PipelineError(f"no notebook selected (folder {notebooks_dir or 'notebooks'}, --only {only!r}, "
                            f"--from {start!r}, --to {stop!r})")
    declared = inspect_parameters(notebooks)
    check_extra_parameters(declared, extra)

    runs_root = Path(runs_dir).resolve() if runs_dir is not None else paths.runs_dir()
    run_dir = _run_folder(runs_root, run_name, given, resume, checkpoint)
    _preflight(given["DATASET"], given["DATA_ROOT"], given["PRESET"], overrides, smoke=given["SMOKE"],
               device=given["DEVICE"], seed=given["SEED"])
    data_root = given["DATA_ROOT"]
    standard = {"RUN_NAME": run_dir.name, "PRESET": given["PRESET"], "DATASET": given["DATASET"],
                "DATA_ROOT": str(Path(data_root).resolve()) if data_root is not None else str(paths.data_root()),
                "OVERRIDES": dict(overrides or {}), "SMOKE": bool(given["SMOKE"]), "DEVICE": given["DEVICE"],
                "SEED": int(given["SEED"]), "RESUME": bool(resume), "INTERACTIVE": False}
    result = PipelineResult(run_dir=run_dir)
    state = _start_state(run_dir, standard, extra, resume, kernel, result, echo)
    with _kernel_environment(runs_root):
        failure = _run_notebooks(notebooks, declared, {**standard, **extra}, state, result, resume=resume,
                                 cell_timeout=cell_timeout, stream=stream, echo=echo)
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        result.metrics = read_json(metrics_path, "run metrics")
    if failure is not None:
        echo(format_summary(result))
        raise NotebookFailed(failure)
    return result


def _standard_values(given: dict, extra: dict, overrides: Mapping[str, Any] | None) -> tuple[dict, dict | None]:
    """Move standard names given through ``--param`` (README: ``--param SEED=2``) from ``extra`` into
    ``given`` (OVERRIDES merge into ``overrides``) and check preset, dataset and device.

    Raises:
        PipelineError: a runner-only name, a value of the wrong type, or an unknown preset/dataset/device.
    """
    from irra_core.config import PRESET_FAMILIES

    for name in [n for n in extra if n in STANDARD_PARAMETERS]:
        if name in RUNNER_ONLY:
            raise PipelineError(f"--param {name}=... is decided by the runner; use {FLAG_FOR[name]}")
        value = extra.pop(name)
        if name == "OVERRIDES":
            if not isinstance(value, Mapping):
                raise PipelineError(f"--param OVERRIDES must be a mapping such as '{{optim.lr: 1.0e-4}}', got {value!r}")
            overrides = {**value, **dict(overrides or {})}
        else:
            _check_standard_type(name, value)
            given[name] = value
    if given["PRESET"] not in PRESET_FAMILIES:
        raise PipelineError(f"--preset {given['PRESET']!r} is not one of {sorted(PRESET_FAMILIES)}")
    if given["DATASET"] not in DATASET_CHOICES:
        raise PipelineError(f"--dataset {given['DATASET']!r} is not one of {list(DATASET_CHOICES)}")
    device = given["DEVICE"]
    if device not in DEVICES and not re.fullmatch(r"cuda:\d+", device):
        raise PipelineError(f"--device {device!r} is not one of {list(DEVICES)} or 'cuda:N'")
    return given, overrides


def _run_folder(runs_root: Path, run_name: str | None, given: Mapping[str, Any], resume: bool,
                checkpoint: str | Path | None) -> Path:
    """``<runs_root>/<run_name>`` (default name from preset, dataset and smoke), checked against ``resume``.

    Raises:
        PipelineError: ``resume`` without a run name or folder, a folder that exists without ``resume``, or a
            run name that is not a plain folder name.
    """
    if resume and not run_name:
        existing = sorted(p.name for p in runs_root.glob("*") if (p / STATE_FILE).exists()) if runs_root.is_dir() else []
        raise PipelineError("--resume needs --run-name" + (f" (the latest run is {existing[-1]!r})" if existing else ""))
    run_name = run_name or (default_run_name(given["PRESET"], given["DATASET"], smoke=given["SMOKE"])
                            + ("_checkpoint" if checkpoint else ""))
    if Path(run_name).name != run_name or run_name in (".", ".."):
        raise PipelineError(f"--run-name {run_name!r} must be a plain folder name")
    run_dir = runs_root / run_name
    if run_dir.exists() and not resume:
        raise PipelineError(f"run folder {run_dir} already exists; pass --resume to continue it or choose "
                            f"another --run-name")
    if resume and not run_dir.exists():
        raise PipelineError(f"--resume: run folder {run_dir} does not exist")
    return run_dir


def _start_state(run_dir: Path, standard: dict, extra: dict, resume: bool, kernel: str | None,
                 result: PipelineResult, echo: Callable[[str], None]) -> dict:
    """Read (``resume``) or start ``pipeline.json``, check that a resumed run keeps its parameters, choose the
    kernel (into ``result``), create ``notebooks/`` and write the state once.

    Raises:
        PipelineError: a :data:`RESUME_MUST_MATCH` parameter differs from the resumed run's.
    """
    state = _load_state(run_dir) if resume else {}
    if resume and not state:
        result.notes.append(f"{run_dir} has no {STATE_FILE}; running every selected notebook")
    for key in RESUME_MUST_MATCH if state else ():
        before = state.get("parameters", {}).get(key)
        if before != standard[key]:
            raise PipelineError(f"--resume: run {standard['RUN_NAME']!r} was started with {key}={before!r} but "
                                f"this call gives {standard[key]!r}; pass the same {FLAG_FOR[key]} or start a new run")
    result.kernel, note = choose_kernel(kernel)
    if note:
        result.notes.append(note)
    for line in result.notes:
        echo(f"note: {line}")
    (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    state = state or {"run_name": standard["RUN_NAME"], "created": _now(), "notebooks": {}}
    state.update({"parameters": {k: v for k, v in standard.items() if k not in ("RESUME", "INTERACTIVE")},
                  "kernel": result.kernel, "updated": _now()})
    state.setdefault("notebooks", {})
    state.setdefault("extra_parameters", {}).update(extra)
    _save_state(run_dir, state)
    return state


def _save_state(run_dir: Path, state: dict) -> None:
    state["updated"] = _now()
    atomic_write_json(run_dir / STATE_FILE, state)


def _run_notebooks(notebooks: Sequence[Path], declared: Mapping[str, Mapping], parameters: Mapping[str, Any],
                   state: dict, result: PipelineResult, *, resume: bool, cell_timeout: int | None, stream: bool,
                   echo: Callable[[str], None]) -> str | None:
    """Run each notebook in order with the ``parameters`` it declares, into ``result``: skip those a resumed run
    finished, mark the rest ``not run`` after a failure. Returns the first failure's description, or None."""
    run_dir, failure = result.run_dir, None
    for nb in notebooks:
        output = run_dir / "notebooks" / nb.name
        if output.resolve() == nb.resolve():  # the one thing papermill would happily do
            raise PipelineError(f"refusing to execute {nb} in place")
        previous = state["notebooks"].get(nb.stem, {})
        if failure is not None:
            result.notebooks.append(NotebookResult(nb.stem, "not run", output=output))
        elif resume and previous.get("status") == "done":
            result.notebooks.append(NotebookResult(nb.stem, "skipped", previous.get("duration_s", 0.0), output))
            echo(f"== {nb.stem}: finished in an earlier call, skipped")
        else:
            own = {k: v for k, v in parameters.items() if k in declared[nb.stem]}
            outcome = _run_notebook(nb, output, own, state, run_dir, kernel=result.kernel, cell_timeout=cell_timeout,
                                    stream=stream, echo=echo)
            result.notebooks.append(outcome)
            failure = outcome.error or None
    return failure


def _run_notebook(nb: Path, output: Path, parameters: dict, state: dict, run_dir: Path, *, kernel: str,
                  cell_timeout: int | None, stream: bool, echo: Callable[[str], None]) -> NotebookResult:
    """Execute one notebook with papermill, recording running/done/failed/interrupted in ``pipeline.json``.

    Returns a ``done`` or ``failed`` :class:`NotebookResult` (``error`` names the cell); a KeyboardInterrupt is
    recorded and re-raised.
    """
    import papermill as pm

    echo(f"== {nb.stem}: running -> {output}")
    state["notebooks"][nb.stem] = {"status": "running", "started": _now()}
    _save_state(run_dir, state)
    began = time.perf_counter()
    try:
        pm.execute_notebook(str(nb), str(output), parameters=parameters, kernel_name=kernel,
                            cwd=str(paths.project_root()), progress_bar=False,
                            stdout_file=sys.stdout if stream else None, stderr_file=sys.stderr if stream else None,
                            execution_timeout=cell_timeout)
    except KeyboardInterrupt:
        state["notebooks"][nb.stem] = {"status": "interrupted", "finished": _now()}
        _save_state(run_dir, state)
        raise
    except Exception as exc:  # a cell error (PapermillExecutionError), kernel death or a timeout
        duration = time.perf_counter() - began
        failure = _describe_failure(nb, exc, output)
        state["notebooks"][nb.stem] = {"status": "failed", "duration_s": round(duration, 2), "finished": _now(),
                                       "error": failure}
        _save_state(run_dir, state)
        return NotebookResult(nb.stem, "failed", duration, output, failure)
    duration = time.perf_counter() - began
    state["notebooks"][nb.stem] = {"status": "done", "duration_s": round(duration, 2), "finished": _now()}
    _save_state(run_dir, state)
    echo(f"== {nb.stem}: done in {duration:.1f} s")
    return NotebookResult(nb.stem, "done", duration, output)


def _preflight(dataset: str, data_root: str | Path | None, preset: str, overrides: Mapping[str, Any] | None, *,
               smoke: bool, device: str, seed: int) -> None:
    """Check what would otherwise fail inside a notebook, before the run folder exists: the config
    overrides (for both models) and, for a real dataset, its folder and annotation file.

    Raises:
        ConfigError: an unknown override key or a bad value.
        DatasetError: the dataset folder or its annotation file is missing (the message says what is there).
    """
    from irra_core.workbook import workbook_config

    root = str(Path(data_root)) if data_root is not None else str(paths.data_root())
    for arch in ("irra", "php"):
        workbook_config(arch, preset, dataset, root, overrides, smoke=smoke, device=device, seed=seed)
    if dataset != "synthetic":
        from irra_core.data.parsers import resolve_dataset_dir

        resolve_dataset_dir(dataset, root)
#: the notebooks ``--checkpoint`` runs: evaluation and inspection; expert routing and the leak audit for PHP only
CHECKPOINT_NOTEBOOKS = {"irra": ("20", "30", "31", "33"), "php": ("20", "30", "31", "32", "33", "40")}


def checkpoint_notebooks(checkpoint: str | Path, only=None, start=None, stop=None) -> tuple[Any, str]:
    """``--checkpoint PATH``: the notebook selection (``only``) and the absolute path for ``CHECKPOINT_PATH``.

    Without ``--only`` / ``--from`` / ``--to`` the selection is :data:`CHECKPOINT_NOTEBOOKS` for the checkpoint's
    architecture (read from its weights); nothing is trained.

    Raises:
        PipelineError: the checkpoint does not exist or cannot be read (the message names it).
    """
    from irra_core.model.load import read_checkpoint

    path = Path(checkpoint).expanduser().resolve()
    try:
        arch = read_checkpoint(path).arch
    except (FileNotFoundError, ValueError) as exc:
        raise PipelineError(f"--checkpoint: {exc}") from exc
    if only is None and start is None and stop is None:
        only = list(CHECKPOINT_NOTEBOOKS[arch])
    return only, str(path)


def format_summary(result: PipelineResult) -> str:
    """Human summary: run folder, each notebook's status and duration, headline metrics."""
    lines = [f"Run folder: {result.run_dir}", f"  executed notebooks: {result.run_dir / 'notebooks'}",
             f"  figures:            {result.run_dir / 'figures'}", "Notebooks:"]
    for r in result.notebooks:
        lines.append(f"  {r.name:<28} {r.status:<8} {r.duration_s:7.1f} s")
    total = sum(r.duration_s for r in result.notebooks if r.status == "done")
    lines.append(f"  {'total (this call)':<28} {'':<8} {total:7.1f} s")
    metrics = result.metrics
    if metrics:
        which = f" - {metrics['headline']}" if metrics.get("headline") else ""
        lines.append(f"Headline metrics{which} ({result.run_dir / 'metrics.json'}):")
        for direction in ("t2i", "i2t"):
            if isinstance(metrics.get(direction), Mapping):
                lines.append(f"  {direction}: " + _metric_line(metrics[direction]))
        for model, values in (metrics.get("models") or {}).items():
            chosen = values.get(values.get("selected", ""), values) if isinstance(values, Mapping) else {}
            if isinstance(chosen.get("t2i"), Mapping):
                lines.append(f"  {model:<14} t2i " + _metric_line(chosen["t2i"]) + f"  ({values.get('selected')})")
    else:
        lines.append("Headline metrics: none yet (the evaluation notebook writes metrics.json)")
    return "\n".join(lines)


def _metric_line(values: Mapping[str, Any]) -> str:
    return "  ".join(f"{k} {values[k]:.2f}" for k in ("R1", "R5", "R10", "mAP", "mINP")
                     if isinstance(values.get(k), (int, float)))


def format_listing(notebooks: Sequence[Path]) -> str:
    """The notebooks and their own parameters (``--list``)."""
    import papermill as pm

    lines = [f"standard parameters (every notebook): {', '.join(STANDARD_PARAMETERS)}"]
    for nb in notebooks:
        params = pm.inspect_notebook(str(nb))
        lines.append(nb.stem)
        for name, info in params.items():
            if name in STANDARD_PARAMETERS:
                continue
            help_text = f"  # {info['help']}" if info.get("help") else ""
            lines.append(f"    {name}: {info['inferred_type_name']} = {info['default']}{help_text}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m irra_core.pipeline", allow_abbrev=False,
        description="Run the numbered workbook notebooks headless with papermill into outputs/runs/<run>/.")
    parser.add_argument("--dataset", default=None, choices=DATASET_CHOICES, help="dataset (default: synthetic)")
    parser.add_argument("--data-root", default=None,
                        help="folder holding the datasets (default: IRRA_DATA_ROOT or <project>/data)")
    parser.add_argument("--preset", default=None, help="size family: cpu (small towers) | paper (ViT-B/16, GPU)")
    parser.add_argument("--run-name", default=None, help="run folder name (default <YYYYmmdd-HHMMSS>_<preset>_<dataset>)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a notebook's own parameter, value read as YAML (repeatable)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override for every notebook, e.g. optim.lr=1e-4 (repeatable)")
    parser.add_argument("--only", default=None, help="comma-separated notebook numbers or names, e.g. 00,01")
    parser.add_argument("--from", dest="start", default=None, help="first notebook number to run (inclusive)")
    parser.add_argument("--to", dest="stop", default=None, help="last notebook number to run (inclusive)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an existing run: skip finished notebooks, re-run failed ones")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes (SMOKE=True), as in CI: the dataset named is kept (its first identities)")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--seed", type=int, default=None, help="training seed (SEED, default 1)")
    parser.add_argument("--notebooks-dir", default=None, help="folder of numbered notebooks (default notebooks/)")
    parser.add_argument("--runs-dir", default=None, help="where run folders go (default outputs/runs)")
    parser.add_argument("--kernel", default=None, help=f"Jupyter kernel (default IRRA_KERNEL or {DEFAULT_KERNEL})")
    parser.add_argument("--cell-timeout", type=int, default=None, help="seconds any one cell may run")
    parser.add_argument("--quiet", action="store_true", help="do not echo the notebooks' output")
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="evaluate and inspect an existing checkpoint without training (a workbook run folder, "
                             "an IRRA/PHP log folder with configs.yaml + best.pth, or a .pth/.pt file): notebooks "
                             "20, 30, 31, 33 (and 32, 40 for PHP) on --dataset")
    parser.add_argument("--list", action="store_true", help="list the notebooks and their parameters, run nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m irra_core.pipeline``: 0 when every notebook finished, 1 when one failed,
    2 for an expected error before anything ran (one ``error: ...`` paragraph, :func:`irra_core.cli.run_cli`)."""
    from irra_core.cli import run_cli

    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.add_argument("--debug", action="store_true", help="show the traceback of expected errors too")
    args = parser.parse_args(argv)
    try:
        if args.list:
            notebooks = select_notebooks(discover_notebooks(args.notebooks_dir), args.only, args.start, args.stop)
            print(format_listing(notebooks))
            return 0
        params = dict(parse_assignment(p, "--param") for p in args.param)
        overrides = dict(parse_assignment(o, "--override") for o in args.override)
        for name, dest in (("PRESET", "preset"), ("DATASET", "dataset"), ("DATA_ROOT", "data_root"),
                           ("DEVICE", "device"), ("SEED", "seed"), ("SMOKE", "smoke")):
            if name in params and getattr(args, dest) not in (None, False):
                raise PipelineError(f"{name} is given twice, by {FLAG_FOR[name]} and by --param {name}=...")
        defaults = {"preset": "cpu", "dataset": "synthetic", "device": "auto", "seed": 1}
        for dest, value in defaults.items():
            if getattr(args, dest) is None:
                setattr(args, dest, value)
        started = time.perf_counter()
        result = run_pipeline(dataset=args.dataset, data_root=args.data_root, preset=args.preset,
                              run_name=args.run_name, params=params, overrides=overrides, only=args.only,
                              start=args.start, stop=args.stop, resume=args.resume, smoke=args.smoke,
                              device=args.device, seed=args.seed, notebooks_dir=args.notebooks_dir,
                              runs_dir=args.runs_dir, kernel=args.kernel, cell_timeout=args.cell_timeout,
                              stream=not args.quiet, checkpoint=args.checkpoint)
    except NotebookFailed as exc:
        print(f"\nirra_core.pipeline: error: {exc}", file=sys.stderr)
        return 1
    print("\n" + format_summary(result))
    print(f"Wall time: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
