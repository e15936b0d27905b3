"""The few helpers every workbook notebook needs, so the notebooks stay free of ``def`` and copied snippets.

Run folders (:func:`resolve_run_dir`), the configuration a notebook trains with (:func:`workbook_config`),
the checkpoint a run selected and the workbook's headline metrics, and the environment checks of
``00_environment_check``. The runner itself (papermill, resume, the command line) is
:mod:`irra_core.pipeline`.
"""
from __future__ import annotations

import datetime as _dt
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from irra_core import paths
from irra_core.errors import UserError

__all__ = ["PipelineError", "default_run_name", "resolve_run_dir", "workbook_config", "AUDIT_RUN",
           "audit_model_config", "train_audit_model", "selected_checkpoint", "run_checkpoints", "headline_metrics",
           "REPORTED_PACKAGES", "environment_checks", "raise_for_failed_checks"]


class PipelineError(UserError, RuntimeError):
    """The run cannot start or a notebook failed; the message names the notebook, cell or flag."""


def default_run_name(preset: str, dataset: str, *, smoke: bool = False, now: _dt.datetime | None = None) -> str:
    """``<YYYYmmdd-HHMMSS>_<preset>_<dataset>`` (plus ``_smoke``), e.g. ``20261128-071500_cpu_synthetic``."""
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}_{preset}_{dataset}" + ("_smoke" if smoke else "")


def resolve_run_dir(run_name: str, preset: str = "cpu", dataset: str = "synthetic", *, smoke: bool = False,
                    latest: bool = False, runs_root: str | Path | None = None) -> Path:
    """The run folder a notebook writes into, created with its ``figures/`` sub-folder.

    Args:
        run_name: the notebook's ``RUN_NAME``; the runner always passes one. ``""`` (a notebook opened
            by hand in JupyterLab) means a fresh auto-named run, or with ``latest=True`` the newest
            existing run of this preset and dataset (for notebooks that read earlier results).
        preset, dataset, smoke: used for the auto name only.
        latest: see ``run_name``.
        runs_root: defaults to :func:`irra_core.paths.runs_dir` (``IRRA_RUNS_DIR``, set by the runner).

    Raises:
        PipelineError: ``latest=True`` and no run of this preset and dataset exists yet.
    """
    root = Path(runs_root) if runs_root is not None else paths.runs_dir()
    if run_name:
        if Path(run_name).name != run_name:
            raise PipelineError(f"RUN_NAME {run_name!r} must be a plain folder name (it lives under {root})")
        run_dir = root / run_name
    elif latest:
        suffix = f"_{preset}_{dataset}" + ("_smoke" if smoke else "")
        candidates = sorted(p for p in root.glob(f"*{suffix}") if p.is_dir()) if root.is_dir() else []
        if not candidates:
            raise PipelineError(f"RUN_NAME is empty and no earlier run '*{suffix}' exists under {root}; "
                                f"run the training notebooks first or set RUN_NAME")
        run_dir = candidates[-1]
    else:
        run_dir = root / default_run_name(preset, dataset, smoke=smoke)
    (run_dir / "figures").mkdir(parents=True, exist_ok=True)
    return run_dir


def workbook_config(arch: str, preset: str = "cpu", dataset: str = "synthetic", data_root: str = "data",
                    overrides: Mapping[str, Any] | None = None, *, smoke: bool = False, device: str = "auto",
                    seed: int = 1, interactive: bool = False):
    """The :class:`~irra_core.config.Config` a notebook trains or evaluates with.

    ``arch`` ("irra" | "php") and the size family ``preset`` ("cpu" | "paper") pick the preset
    (:func:`irra_core.config.preset_for`); the standard notebook parameters become dotted overrides;
    ``overrides`` (the notebook's ``OVERRIDES``) are applied last and win. ``device="auto"`` keeps the
    preset's choice (the smoke preset pins the CPU). Progress is a bar in JupyterLab and plain lines
    headless (papermill issues #617/#765: bars stay at 0 when the output is not a live front end).
    """
    from irra_core.config import load_config, preset_for

    values: dict[str, Any] = {"data.dataset": dataset, "data.root": str(data_root), "train.seed": int(seed),
                              "train.progress": "bar" if interactive else "lines"}
    if device != "auto":
        values["train.device"] = device
    values.update(dict(overrides or {}))
    return load_config(preset_for(arch, preset), values, smoke=smoke)


#: the folder (under a workbook run) of notebook 40's PHP with the release's batch-axis EFP
AUDIT_RUN = "php-batch-efp"


def audit_model_config(preset: str = "cpu", dataset: str = "synthetic", data_root: str = "data",
                       overrides: Mapping[str, Any] | None = None, *, smoke: bool = False, device: str = "auto",
                       seed: int = 1, interactive: bool = False, epochs: int = 0) -> tuple[str, Any]:
    """Notebook 40's model: the ``php`` preset of the size family with ``model.efp_attention: batch`` (PHP's
    released EFP, SPEC §2.11), trained as long as the per-sample PHP unless ``epochs`` > 0.

    ``11_train_php`` trains it alongside PHP (:func:`irra_core.train_notebook.train_with_live_curves`) and
    ``40_leak_audit`` resumes the same folder, so both build it here.

    Returns:
        ``(folder name, Config)``: :data:`AUDIT_RUN`, or ``f"{AUDIT_RUN}-{epochs}ep"`` when ``epochs`` is set
        (another run, kept apart from the default one).
    """
    values = {**dict(overrides or {}), "model.efp_attention": "batch"}
    if epochs:
        values["train.num_epoch"] = int(epochs)
    cfg = workbook_config("php", preset, dataset, data_root, values, smoke=smoke, device=device, seed=seed,
                          interactive=interactive)
    return (f"{AUDIT_RUN}-{int(epochs)}ep" if epochs else AUDIT_RUN), cfg


def train_audit_model(cfg: Any, run_dir: str | Path, resume: bool = False):
    """Notebook 40's training cell: :func:`irra_core.engine.fit` of its model into ``run_dir``.

    A run that ``11_train_php`` started alongside PHP in this workbook run (its
    :func:`~irra_core.alongside.alongside_config_path` file is there) is this notebook's own: it is resumed even
    when ``resume`` is False, so a finished one is only re-read and an interrupted one continues from its last
    epoch (a different config is still refused). Otherwise ``resume`` applies as in the training notebooks.

    Returns:
        The :class:`irra_core.engine.FitResult`.

    Raises:
        irra_core.runs.RunExistsError: the folder holds a run with another config, or (not started alongside)
            any run while ``resume`` is False.
    """
    from irra_core.alongside import alongside_config_path
    from irra_core.engine import fit

    return fit(cfg, run_dir, resume=resume or alongside_config_path(run_dir).exists())


def selected_checkpoint(training_metrics: Mapping[str, Any]) -> str:
    """``"best"`` or ``"last"``: the checkpoint a training run's ``metrics.json`` reports as selected."""
    policy = (training_metrics.get("selection") or {}).get("policy")
    return "last" if policy == "last" or not training_metrics.get("best") else "best"


def run_checkpoints(training_metrics: Mapping[str, Any]) -> list[str]:
    """The checkpoints a training run holds for evaluation: ``["best", "last"]``, or ``["last"]`` when it
    selected without a validation split (no ``best.pt``: ``metrics.json`` has ``"best": null``)."""
    return ["best", "last"] if training_metrics.get("best") else ["last"]


def headline_metrics(evaluations: Mapping[str, Mapping[str, Mapping]], selected: Mapping[str, str],
                     headline: str = "php") -> dict:
    """The workbook run's ``metrics.json``: ``{"t2i", "i2t", "headline", "models"}``.

    Args:
        evaluations: ``{model: {"best": {"t2i", "i2t"}, "last": {...}}}`` (test split, percent); ``best``
            is absent for a run without one (:func:`run_checkpoints`); an existing checkpoint evaluated without
            training (``pipeline --checkpoint``) has one entry, ``"checkpoint"``.
        selected: ``{model: "best" | "last" | "checkpoint"}`` (:func:`selected_checkpoint` of each training run).
        headline: the model whose selected checkpoint gives the top-level ``t2i`` / ``i2t``; the first
            evaluated model when it is absent.
    """
    if not evaluations:
        raise PipelineError("no evaluated model: train one first (notebooks 10_train_irra / 11_train_php)")
    chosen = headline if headline in evaluations else next(iter(evaluations))
    models = {m: {**{which: dict(v) for which, v in e.items()}, "selected": selected[m]}
              for m, e in evaluations.items()}
    top = models[chosen][models[chosen]["selected"]]
    return {"t2i": dict(top["t2i"]), "i2t": dict(top["i2t"]), "headline": f"{chosen} ({models[chosen]['selected']})",
            "models": models}


#: packages whose versions 00_environment_check reports (distribution names)
REPORTED_PACKAGES = ("torch", "torchvision", "numpy", "pillow", "open_clip_torch", "pandas", "matplotlib",
                     "seaborn", "ipywidgets", "ipykernel", "papermill", "nbstripout", "pyyaml")


def environment_checks(preset: str = "cpu", dataset: str = "synthetic", data_root: str | Path = "data",
                       device: str = "auto") -> list[dict]:
    """What ``00_environment_check`` shows: one row per check, ``{"check", "value", "ok", "fix"}``.

    Covers the Python and package versions, the device and the precisions it offers, the project paths
    (the run folder must be writable), the dataset's presence and the kernel. A row with ``ok=False``
    carries the fix; :func:`raise_for_failed_checks` turns those into one error.
    """
    import importlib.metadata as md
    import platform

    rows: list[dict] = []

    def add(check: str, value: Any, ok: bool = True, fix: str = "") -> None:
        rows.append({"check": check, "value": str(value), "ok": bool(ok), "fix": "" if ok else fix})

    add("python", f"{platform.python_version()} ({sys.executable})", sys.version_info >= (3, 10),
        "use Python >= 3.10 (make setup builds .venv with it)")
    for name in REPORTED_PACKAGES:
        try:
            add(name, md.version(name))
        except md.PackageNotFoundError:
            add(name, "missing", False, "run `make setup` (pip install -e '.[dev]')")
    _device_checks(add, preset, device)
    root = paths.project_root()
    add("project root", root, (root / "irra_core").is_dir(), "set IRRA_HOME to the project folder")
    runs = paths.runs_dir()
    runs_ok = os.access(runs if runs.exists() else _existing_parent(runs), os.W_OK)
    add("runs folder", runs, runs_ok, f"make {runs} writable or set IRRA_RUNS_DIR")
    _dataset_check(add, dataset, Path(data_root))
    add("hub downloads", f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r}")
    add("kernel", f"{sys.executable} (matplotlib backend {os.environ.get('MPLBACKEND', 'default')})")
    return rows


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name (from ``cpuinfo``, Linux's ``/proc/cpuinfo``, else ``platform.processor()``), with its
    family and model numbers where the file gives them: speeds differ by machine type (``benchmarks/README.md``,
    "Twelfth pass"), so runs record it. ``"unknown"`` when neither says."""
    import platform

    fields: dict[str, str] = {}
    try:
        with open(cpuinfo, encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if not key:
                    break  # the first processor's block is enough
                fields.setdefault(key, value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def _device_checks(add: Callable[..., None], preset: str, device: str) -> None:
    """CUDA, the device ``device`` resolves to (:func:`irra_core.runtime.device_type`), the GPU and its bf16
    support, the CPU threads and whether the preset's precision suits this machine."""
    import torch

    from irra_core.config import load_config, preset_for
    from irra_core.runtime import device_type

    cuda = torch.cuda.is_available()
    add("cuda available", f"{cuda} (torch {torch.__version__}, CUDA build {torch.version.cuda})")
    add("device", f"DEVICE={device!r} -> {device_type(device)}", cuda or not device.startswith("cuda"),
        "no CUDA device here: pass --device cpu (or auto)")
    if cuda:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        add("gpu", f"{props.name}, {props.total_memory / 2**30:.1f} GiB")
        add("bf16 autocast", torch.cuda.is_bf16_supported())
    else:
        add("bf16 autocast", "CPU only: the cpu presets use fp32 (bf16 autocast was no faster at their sizes, "
                             "even with AMX; benchmarks/README.md)")
    add("cpu", cpu_model())
    add("cpu threads", f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores")
    precision = load_config(preset_for("php", preset)).model.precision
    add(f"preset '{preset}' precision", precision, cuda or precision == "fp32" or device == "cpu",
        f"the {preset!r} presets want a GPU ({precision}); use --preset cpu on this machine")


def _dataset_check(add: Callable[..., None], dataset: str, data_root: Path) -> None:
    """The synthetic set's folder must be writable; a real dataset must be found under ``data_root``."""
    if dataset == "synthetic":
        writable = os.access(data_root if data_root.exists() else _existing_parent(data_root), os.W_OK)
        add("dataset", f"synthetic: generated by 01_prepare_data under {data_root / 'synthetic'}", writable,
            f"make {data_root} writable or pass another --data-root")
        return
    from irra_core.data.errors import DatasetError
    from irra_core.data.parsers import resolve_dataset_dir

    try:
        folder, annotations = resolve_dataset_dir(dataset, data_root)
        add("dataset", f"{dataset}: {annotations}")
    except DatasetError as exc:
        add("dataset", f"{dataset}: not found", False, f"{exc} (see data/README.md)")


def _existing_parent(path: Path) -> Path:
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return path


def raise_for_failed_checks(rows: Sequence[Mapping[str, Any]]) -> None:
    """Raise one :class:`PipelineError` listing every failed check of :func:`environment_checks` and its fix."""
    failed = [row for row in rows if not row["ok"]]
    if failed:
        raise PipelineError("environment check failed:\n" + "\n".join(
            f"  - {row['check']}: {row['value']} -> {row['fix']}" for row in failed))
