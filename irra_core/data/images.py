"""Reading images: one attempt, errors that name the file (IRRA's ``read_image`` retries forever)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, UnidentifiedImageError

from irra_core.data.errors import ImageReadError

_HINT = ("run `python -m irra_core.data check --dataset NAME --root DIR` to list every bad file, or set "
         "data.skip_bad_images=true to skip them (they are reported)")


def read_image(path: str | Path) -> Image.Image:
    """Open an image as RGB; one attempt, and an :class:`ImageReadError` naming the file otherwise."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise ImageReadError(f"image file {path} does not exist; {_HINT}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"image file {path} cannot be decoded ({exc}); {_HINT}") from exc


def find_unreadable(paths: Sequence[str]) -> dict[str, str]:
    """``{path: reason}`` for every file in ``paths`` that is missing or does not decode fully."""
    bad: dict[str, str] = {}
    for path in dict.fromkeys(paths):
        try:
            with Image.open(path) as img:
                img.load()
        except FileNotFoundError:
            bad[path] = "missing"
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            bad[path] = f"undecodable: {exc}"
    return bad
