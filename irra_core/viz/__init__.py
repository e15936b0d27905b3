"""Plots and explorers: they read results, they never train.

Modules (import the one you need; this package imports only the light theme helpers):

* ``style``: :func:`set_theme` (one theme, applied explicitly) and :func:`save_figure` (atomic PNG);
* ``data_plots``: image–caption grids, caption lengths, identity and attribute statistics;
* ``curves``: training curves from ``log.jsonl`` and the live-curve callback;
* ``retrieval``, ``attention``, ``routing``, ``inspect``, ``widgets``: galleries, attention maps, expert
  routing and the ipywidgets explorers with their static twins.

Every plot function takes ``ax=None`` (or ``fig=None`` for multi-panel figures), returns the Figure and
never calls ``show()``.
"""
from irra_core.viz.style import MODEL_COLORS, SPLIT_COLORS, save_figure, set_theme

__all__ = ["set_theme", "save_figure", "SPLIT_COLORS", "MODEL_COLORS"]
