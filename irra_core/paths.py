"""Where things live: project root, data, runs. Environment variables override each one.

* ``IRRA_HOME``: project root (default: the folder holding ``pyproject.toml`` above this package,
  else the current directory);
* ``IRRA_DATA_ROOT``: datasets (default ``<root>/data``);
* ``IRRA_RUNS_DIR``: run folders (default ``<root>/outputs/runs``);
* ``IRRA_CACHE``: downloaded weights (default ``~/.cache/irra_workbook``).
"""
from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    if os.environ.get("IRRA_HOME"):
        return Path(os.environ["IRRA_HOME"]).resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd()


def data_root() -> Path:
    return Path(os.environ.get("IRRA_DATA_ROOT", project_root() / "data")).resolve()


def runs_dir() -> Path:
    return Path(os.environ.get("IRRA_RUNS_DIR", project_root() / "outputs" / "runs")).resolve()


def cache_dir() -> Path:
    return Path(os.environ.get("IRRA_CACHE", Path.home() / ".cache" / "irra_workbook")).resolve()
