"""Errors of the data layer; every message names the file or entry and says what to do."""
from __future__ import annotations

from irra_core.errors import UserError


class DatasetError(UserError, ValueError):
    """A dataset folder, annotation file or entry is missing or malformed."""


class ImageReadError(UserError, OSError):
    """An image file is missing or cannot be decoded (never retried forever, unlike IRRA)."""
