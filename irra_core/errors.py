"""The root of every *expected* error: bad input, a missing file, weights that cannot be fetched offline.

Each layer's error types (``ConfigError``, ``DatasetError``, ``PretrainedError``, ...) subclass :class:`UserError`
as well as their built-in base, so the command-line tools (:mod:`irra_core.cli`) print any of them as one
``error: ...`` paragraph without importing the layers that define them. The message names the file or field
and says what to do.
"""
from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """An expected failure caused by the user's input or environment; the message says what to do."""
