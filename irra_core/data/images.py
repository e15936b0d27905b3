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


def group_by_folder(paths: Sequence[str], root: str | Path | None = None, examples: int = 3,
                    split_of: dict[str, str] | None = None) -> list[dict]:
    """Missing (or bad) image files grouped by their folder, largest group first.

    Args:
        paths: the files (absolute).
        root: shown folders are relative to its parent (pass the dataset's ``imgs/``: ``imgs/train_query``)
            when they lie under it.
        examples: file names kept per folder.
        split_of: file -> split; adds the sorted ``"splits"`` of each folder's files.

    Returns:
        ``[{"folder": str, "count": int, "folder_exists": bool, "examples": [file names], ("splits")}, ...]``.
    """
    groups: dict[str, list[str]] = {}
    splits: dict[str, set[str]] = {}
    for path in paths:
        folder = str(Path(path).parent)
        groups.setdefault(folder, []).append(Path(path).name)
        if split_of is not None:
            splits.setdefault(folder, set()).add(split_of[path])
    out = []
    for folder, names in groups.items():
        shown = folder
        if root is not None:
            try:
                shown = str(Path(folder).relative_to(Path(root).parent))
            except ValueError:
                pass
        out.append({"folder": shown, "count": len(names), "folder_exists": Path(folder).is_dir(),
                    "examples": sorted(names)[:examples]})
        if split_of is not None:
            out[-1]["splits"] = sorted(splits[folder])
    return sorted(out, key=lambda g: (-g["count"], g["folder"]))


def describe_groups(groups: Sequence[dict], listed: dict[str, int] | None = None, limit: int = 8) -> str:
    """One line per folder of :func:`group_by_folder`: ``imgs/train_query/: 2 of 5 files missing (folder
    absent), e.g. a.jpg, b.jpg``; ``listed`` gives how many files the annotations list per folder."""
    lines = []
    for g in groups[:limit]:
        of = f" of {listed[g['folder']]}" if listed and g["folder"] in listed else ""
        state = "" if g["folder_exists"] else " (the folder does not exist)"
        lines.append(f"{g['folder']}/: {g['count']}{of} file(s){state}, e.g. {', '.join(g['examples'])}")
    if len(groups) > limit:
        lines.append(f"... and {len(groups) - limit} more folder(s), {sum(g['count'] for g in groups[limit:])} file(s)")
    return "; ".join(lines)


def listed_per_folder(paths: Sequence[str], root: str | Path | None = None) -> dict[str, int]:
    """How many distinct files the annotations list per folder (keys as :func:`group_by_folder` shows them)."""
    counts: dict[str, int] = {}
    for path in dict.fromkeys(paths):
        folder = str(Path(path).parent)
        if root is not None:
            try:
                folder = str(Path(folder).relative_to(Path(root).parent))
            except ValueError:
                pass
        counts[folder] = counts.get(folder, 0) + 1
    return counts


def check_images_exist(paths: Sequence[str], root: str | Path, what: str) -> None:
    """Raise one :class:`~irra_core.data.errors.DatasetError` listing missing files by folder (cheap: no
    decoding), so a run stops before training instead of at the first missing file.

    Args:
        paths: image files the annotations list.
        root: the dataset's ``imgs/`` folder (folders are shown relative to the dataset folder).
        what: the dataset, for the message.
    """
    from irra_core.data.errors import DatasetError

    unique = list(dict.fromkeys(paths))
    missing = [p for p in unique if not Path(p).is_file()]
    if not missing:
        return
    groups = group_by_folder(missing, root)
    raise DatasetError(
        f"{what}: {len(missing)} of {len(unique)} image files listed in the annotations are missing, in "
        f"{len(groups)} folder(s): {describe_groups(groups, listed_per_folder(unique, root))}. Copy the missing "
        f"folders from the dataset's distribution into {root}; `python -m irra_core.data check --dataset NAME "
        f"--root DIR --json report.json` lists every file, and data.skip_bad_images=true trains without them")
