"""The workbook's one plotting theme, applied explicitly, and atomic PNG export.

Nothing here runs at import time: a notebook calls :func:`set_theme` once after its imports, so importing
``irra_core`` never changes a user's matplotlib state (and tests keep matplotlib's defaults unless they
ask). Plot functions elsewhere in ``irra_core.viz`` take ``ax=None``, return the Figure and never call
``show()``; notebooks display the figure and save it with :func:`save_figure`.
"""
from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure

from irra_core.io_utils import atomic_write

#: seaborn's colour-blind-safe palette, the one used everywhere
PALETTE = "colorblind"
#: fixed colours so a split or a model keeps its colour from one figure to the next
SPLIT_COLORS = {"train": "#0173b2", "val": "#de8f05", "test": "#029e73"}
MODEL_COLORS = {"irra": "#0173b2", "php": "#de8f05", "php-batch-efp": "#d55e00"}
#: figure sizes in inches: one panel, a wide panel, and one image tile of a grid
PANEL = (6.0, 4.0)
WIDE = (10.0, 4.0)
TILE = (2.2, 4.2)
DPI = 110


def set_theme(context: str = "notebook") -> None:
    """Apply the workbook theme (seaborn ``whitegrid``, colour-blind palette, readable sizes)."""
    import seaborn as sns

    sns.set_theme(context=context, style="whitegrid", palette=PALETTE,
                  rc={"figure.dpi": DPI, "savefig.dpi": DPI, "savefig.bbox": "tight", "axes.titleweight": "bold",
                      "axes.titlesize": "medium", "axes.spines.top": False, "axes.spines.right": False,
                      "figure.autolayout": False})


def save_figure(fig: Figure, path: str | Path, *, dpi: int | None = None) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (a killed kernel never leaves half a PNG); returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_figure writes PNG files; got {path.name!r} (use a .png name)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi or DPI, bbox_inches="tight")
    return atomic_write(path, lambda handle: handle.write(buffer.getvalue()), binary=True)
