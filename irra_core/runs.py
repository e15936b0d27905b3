"""Training run folders: create, refuse to overwrite, or resume; the files a run writes.

Layout (docs/ARCHITECTURE.md)::

    <run>/config.yaml        the resolved config (written once; compared on resume)
    <run>/env.json           versions, git commit, device, threads; one entry per (re)start
    <run>/log.jsonl          one JSON line per epoch
    <run>/metrics.json       final test metrics of the selected checkpoint, plus best / last / selection
    <run>/checkpoints/{last,best}.pt
    <run>/eval/<tag>/        per-evaluation metrics.json and queries.csv

A folder that already holds a run is never overwritten: with ``resume=True`` its config must equal the
requested one (up to keys that do not change the result, :data:`RESUME_FREE_KEYS`), otherwise opening it
is an error that lists the differing keys.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from irra_core.config import Config, config_from_dict, save_config
from irra_core.errors import UserError
from irra_core.io_utils import append_jsonl, atomic_write_json, atomic_write_text, read_json, read_jsonl
from irra_core.paths import project_root, runs_dir

__all__ = ["RunDir", "RunExistsError", "RESUME_FREE_KEYS", "environment_info", "list_runs", "new_run_name"]

#: keys that may differ between a run's config.yaml and a resumed start: where and how fast, not what
RESUME_FREE_KEYS = frozenset({"train.device", "train.progress", "train.log_period", "data.num_workers",
                              "data.root", "data.test_batch_size"})


class RunExistsError(UserError, RuntimeError):
    """The run folder already holds a run that this start may not continue."""


def new_run_name(cfg: Config, *, now: _dt.datetime | None = None) -> str:
    """``<YYYYmmdd-HHMMSS>_<config name>_s<seed>`` (sortable, and distinct for reruns)."""
    now = now or _dt.datetime.now()
    return f"{now:%Y%m%d-%H%M%S}_{cfg.name}_s{cfg.train.seed}"


def _git_commit() -> dict:
    root = project_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(dirty) if commit else None}


def environment_info(device: str | None = None, world_size: int = 1) -> dict:
    """Versions, git commit, device and thread counts of this process (what ``env.json`` records)."""
    import numpy
    import torch

    info: dict[str, Any] = {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0], "platform": platform.platform(), "hostname": platform.node(),
        "torch": torch.__version__, "numpy": numpy.__version__, "git": _git_commit(),
        "device": device, "world_size": world_size, "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "cuda_available": torch.cuda.is_available(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover - a dependency; recorded rather than required here
        info["torchvision"] = None
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class RunDir:
    """One training run folder (see the module docstring); use :meth:`open`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # paths ------------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def env_path(self) -> Path:
        return self.path / "env.json"

    @property
    def log_path(self) -> Path:
        return self.path / "log.jsonl"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    def eval_dir(self, tag: str) -> Path:
        return self.path / "eval" / tag

    # life cycle -------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, cfg: Config, *, resume: bool = True, write: bool = True) -> "RunDir":
        """Create the run folder, or reopen an existing one for resuming.

        Args:
            path: the run folder (created with parents if missing).
            cfg: the resolved config of this start.
            resume: allow continuing a folder that already holds a run with the same config.
            write: False on non-zero ranks: check, but write nothing.

        Raises:
            RunExistsError: the folder holds a run and ``resume`` is False, or its config differs.
        """
        run = cls(path)
        if run.config_path.exists():
            if not resume:
                raise RunExistsError(f"{run.path} already holds a run (config.yaml exists); pass resume=True "
                                     f"to continue it, or choose another run folder")
            differences = run.config_differences(cfg)
            if differences:
                listed = "; ".join(f"{k}: {a!r} (run) vs {b!r} (now)" for k, (a, b) in sorted(differences.items()))
                raise RunExistsError(f"{run.path} holds a run with a different config ({listed}); resume it with "
                                     f"its own config.yaml, or choose another run folder")
        elif run.path.exists() and any(p.name not in {"notebooks", "figures"} for p in run.path.iterdir()):
            # a folder with files but no config.yaml is not ours to write into
            raise RunExistsError(f"{run.path} exists and is not an empty run folder (no config.yaml); "
                                 f"choose another run folder")
        elif write:
            run.path.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run.config_path)
        return run

    def config_differences(self, cfg: Config) -> dict[str, tuple[Any, Any]]:
        """Keys whose value in ``config.yaml`` differs from ``cfg`` (ignoring :data:`RESUME_FREE_KEYS`)."""
        stored = _flat(self.load_config().to_dict())
        now = _flat(cfg.to_dict())
        return {k: (stored.get(k), now.get(k)) for k in sorted(set(stored) | set(now))
                if k not in RESUME_FREE_KEYS and stored.get(k) != now.get(k)}

    def load_config(self) -> Config:
        """The run's resolved config (``config.yaml``)."""
        try:
            values = yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.config_path} does not exist: not a training run folder") from None
        return config_from_dict(values, source=str(self.config_path))

    def record_environment(self, info: dict) -> None:
        """Add this start's environment to ``env.json`` (``starts`` lists every start, resumes included)."""
        previous = read_json(self.env_path, "env.json") if self.env_path.exists() else {}
        starts = list(previous.get("starts", [])) + [info]
        atomic_write_json(self.env_path, {**info, "starts": starts})

    # logs and metrics -------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        """Append one record (one epoch) to ``log.jsonl``."""
        append_jsonl(self.log_path, record)

    def read_log(self) -> list[dict]:
        return read_jsonl(self.log_path)

    def trim_log(self, last_epoch: int) -> None:
        """Drop log lines of epochs after ``last_epoch`` (written before a kill, redone on resume)."""
        if not self.log_path.exists():
            return
        # rewriting also drops a partial last line left by a kill (read_jsonl skips it)
        kept = [r for r in self.read_log() if r.get("epoch", 0) <= last_epoch]
        atomic_write_text(self.log_path, "".join(json.dumps(r) + "\n" for r in kept))

    def write_metrics(self, metrics: dict) -> None:
        atomic_write_json(self.metrics_path, metrics)

    def read_metrics(self) -> dict:
        return read_json(self.metrics_path, "metrics.json")


def list_runs(root: str | Path | None = None) -> list[Path]:
    """Run folders (those holding a ``config.yaml``) under ``root`` (default: the runs directory), sorted."""
    root = Path(root) if root is not None else runs_dir()
    if not root.exists():
        return []
    return sorted(p.parent for p in root.rglob("config.yaml"))
