"""Dataset integrity check: a structured report of what would silently hurt training or evaluation.

Errors (non-zero CLI exit): unreadable annotation file or entry, missing images (one issue per folder, with
counts and examples; the full list is ``report.missing_files`` and the JSON report's ``missing_files``),
undecodable images,
identities shared across splits, identical image files (content hash) under different identities,
training pids that are not contiguous from 0. Warnings: identical captions under different
identities, captions truncated at the context length, split sizes that differ from the published
ones (SPEC §1.3), an image file listed twice.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from irra_core.data.images import find_unreadable, group_by_folder, listed_per_folder
from irra_core.data.errors import DatasetError
from irra_core.data.parsers import SPECS, canonical_name, read_records
from irra_core.data.tokenizer import token_length

# (ids, images, captions) per split, from the IRRA paper §4.1 (SPEC §1.3); optional for a new dataset
PUBLISHED_SIZES: dict[str, dict[str, tuple[int, int, int]]] = {
    "CUHK-PEDES": {"train": (11003, 34054, 68126), "val": (1000, 3078, 6158), "test": (1000, 3074, 6156)},
    "ICFG-PEDES": {"train": (3102, 34674, 34674), "test": (1000, 19848, 19848)},
    "RSTPReid": {"train": (3701, 18505, 37010), "val": (200, 1000, 2000), "test": (200, 1000, 2000)},
}


@dataclass
class Issue:
    severity: str  # error | warning
    kind: str
    message: str
    split: str | None = None
    path: str | None = None


@dataclass
class IntegrityReport:
    """Result of :func:`check_dataset`; ``ok`` is False when any error was found."""

    name: str
    root: str
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    #: every missing image file, ``{"path", "split"}`` (the errors group them by folder)
    missing_files: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def kinds(self) -> set[str]:
        """Kinds of every issue found (errors and warnings)."""
        return {i.kind for i in self.errors + self.warnings}

    def add(self, severity: str, kind: str, message: str, **where: Any) -> None:
        (self.errors if severity == "error" else self.warnings).append(Issue(severity, kind, message, **where))

    def to_dataframe(self):
        """One row per issue: severity, kind, split, path, message (a pandas DataFrame)."""
        import pandas as pd

        rows = [asdict(i) for i in self.errors + self.warnings]
        return pd.DataFrame(rows, columns=["severity", "kind", "split", "path", "message"])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "root": self.root, "ok": self.ok, "stats": self.stats,
                "errors": [asdict(i) for i in self.errors], "warnings": [asdict(i) for i in self.warnings],
                "missing_files": list(self.missing_files)}

    def summary(self, max_lines: int = 20) -> str:
        """Human-readable report."""
        lines = [f"{self.name} at {self.root}: {'OK' if self.ok else 'ERRORS'} "
                 f"({len(self.errors)} errors, {len(self.warnings)} warnings)"]
        for split, s in self.stats.get("splits", {}).items():
            lines.append(f"  {split:5s}: {s['ids']} ids, {s['images']} images, {s['captions']} captions")
        if "caption_tokens" in self.stats:
            c = self.stats["caption_tokens"]
            lines.append(f"  caption tokens: mean {c['mean']:.1f}, max {c['max']}, truncated at "
                         f"{c['context_length']}: {100 * c['truncation_rate']:.2f}%")
        for issue in (self.errors + self.warnings)[:max_lines]:
            lines.append(f"  [{issue.severity}] {issue.kind}: {issue.message}")
        more = len(self.errors) + len(self.warnings) - max_lines
        if more > 0:
            lines.append(f"  ... {more} more (see to_dataframe())")
        if self.missing_files:
            lines.append(f"  {len(self.missing_files)} missing image file(s) in all; `--json FILE` lists every one")
        return "\n".join(lines)


def _sha1(path: Path) -> str | None:
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()
    except OSError:
        return None


def check_dataset(name: str, root: str | Path, *, context_length: int = 77, decode_images: bool = True,
                  hash_images: bool = True) -> IntegrityReport:
    """Check a dataset on disk and return an :class:`IntegrityReport` (never raises on bad data).

    Args:
        name: a dataset of the registry (:data:`irra_core.datasets.SPECS`: ``CUHK-PEDES`` | ``ICFG-PEDES`` |
            ``RSTPReid``; a synthetic set in that format too).
        root: the dataset folder or its parent.
        context_length: truncation length for the caption statistics (IRRA: 77).
        decode_images: fully decode every image (finds truncated/corrupt files).
        hash_images: hash every image file (finds identical files under different identities).
    """
    name = canonical_name(name)
    report = IntegrityReport(name=name, root=str(root))
    try:
        dataset_dir, ann_file, records = read_records(name, root)
    except DatasetError as exc:
        report.add("error", "annotation", str(exc))
        return report
    report.root = str(dataset_dir)
    synthetic = (dataset_dir / "manifest.json").exists() and (dataset_dir / ".irra_synthetic").exists()
    report.stats["synthetic"] = synthetic
    by_split: dict[str, list] = defaultdict(list)
    for rec in records:
        by_split[rec.split].append(rec)
    report.stats["splits"] = {s: {"ids": len({r.raw_id for r in recs}), "images": len(recs),
                                  "captions": sum(len(r.captions) for r in recs)}
                              for s, recs in sorted(by_split.items(), key=lambda kv: ("train", "val", "test").index(kv[0]))}
    _check_images(report, records, dataset_dir / "imgs", decode_images)
    _check_identity_overlap(report, records)
    if hash_images:
        _check_duplicate_images(report, records)
    _check_captions(report, records, context_length)
    if not synthetic:  # split sizes against the published ones (real datasets only)
        _check_split_sizes(report, PUBLISHED_SIZES.get(name, {}))
    _check_pids(report, by_split.get("train", []), SPECS[name].train_pid_offset, ann_file)
    return report


def _check_images(report: IntegrityReport, records: list, img_dir: Path, decode_images: bool) -> None:
    """Files listed twice (warning), missing (grouped by folder: a missing folder is thousands of files) and
    undecodable (``decode_images``) images (errors)."""
    counts: dict[str, int] = defaultdict(int)
    for rec in records:
        counts[str(rec.img_path)] += 1
    for p, n in counts.items():
        if n > 1:
            report.add("warning", "repeated_path", f"{p} is listed {n} times", path=p)
    split_of = {str(r.img_path): r.split for r in records}
    missing = [p for p in counts if not Path(p).exists()]
    report.missing_files = [{"path": p, "split": split_of[p]} for p in missing]
    listed = listed_per_folder(list(counts), img_dir)
    for g in group_by_folder(missing, img_dir, split_of=split_of):
        absent = "" if g["folder_exists"] else "; the folder itself does not exist"
        report.add("error", "missing_images", f"{g['folder']}/: {g['count']} of the {listed.get(g['folder'], '?')} "
                   f"image files the annotations list there are missing{absent} (e.g. {', '.join(g['examples'])}); "
                   f"copy that folder from the dataset's distribution", split=",".join(g["splits"]), path=g["folder"])
    if decode_images:
        missing_set = set(missing)
        present = [p for p in counts if p not in missing_set]
        for p, why in find_unreadable(present).items():
            report.add("error", "corrupt_image", f"image file {p} is {why}", split=split_of[p], path=p)


def _check_identity_overlap(report: IntegrityReport, records: list) -> None:
    """Identities shared across splits (errors)."""
    splits_of_id: dict[int, set[str]] = defaultdict(set)
    for rec in records:
        splits_of_id[rec.raw_id].add(rec.split)
    for raw_id, splits in sorted(splits_of_id.items()):
        if len(splits) > 1:
            report.add("error", "identity_overlap", f"identity {raw_id} appears in splits {sorted(splits)}")


def _check_duplicate_images(report: IntegrityReport, records: list) -> None:
    """Identical image content (SHA-1) under different identities (error) or one identity (warning)."""
    ids_of_hash: dict[str, set[int]] = defaultdict(set)
    files_of_hash: dict[str, list[str]] = defaultdict(list)
    for rec in records:
        digest = _sha1(rec.img_path)
        if digest is not None:
            ids_of_hash[digest].add(rec.raw_id)
            files_of_hash[digest].append(str(rec.img_path))
    for digest, ids in ids_of_hash.items():
        files = sorted(set(files_of_hash[digest]))
        if len(ids) > 1:
            report.add("error", "duplicate_image", f"identical image content under identities {sorted(ids)}: "
                       f"{files[:4]}", path=files[0])
        elif len(files) > 1:
            report.add("warning", "duplicate_image_same_identity", f"identical files of identity "
                       f"{next(iter(ids))}: {files[:4]}", path=files[0])


def _check_captions(report: IntegrityReport, records: list, context_length: int) -> None:
    """Identical captions under different identities and captions truncated at ``context_length`` tokens
    (warnings), with their statistics in ``report.stats``."""
    ids_of_caption: dict[str, set[int]] = defaultdict(set)
    for rec in records:
        for cap in rec.captions:
            ids_of_caption[cap.strip().lower()].add(rec.raw_id)
    shared = {c: ids for c, ids in ids_of_caption.items() if len(ids) > 1}
    report.stats["captions_shared_across_identities"] = len(shared)
    if shared:
        example = next(iter(shared.items()))
        report.add("warning", "duplicate_caption", f"{len(shared)} caption(s) appear under several identities, "
                   f"e.g. {example[0][:80]!r} under {sorted(example[1])[:5]}")
    lengths = [token_length(c) for rec in records for c in rec.captions]
    truncated = sum(n > context_length for n in lengths)
    report.stats["caption_tokens"] = {"context_length": context_length, "mean": sum(lengths) / max(1, len(lengths)),
                                      "max": max(lengths, default=0), "truncated": truncated,
                                      "truncation_rate": truncated / max(1, len(lengths))}
    if truncated:
        report.add("warning", "truncated_captions", f"{truncated} of {len(lengths)} captions exceed "
                   f"{context_length} tokens and are truncated")


def _check_split_sizes(report: IntegrityReport, published: dict[str, tuple[int, int, int]]) -> None:
    """Split sizes that differ from the published ``(ids, images, captions)`` (warnings)."""
    for split, (ids, imgs, caps) in published.items():
        got = report.stats["splits"].get(split, {"ids": 0, "images": 0, "captions": 0})
        if (got["ids"], got["images"], got["captions"]) != (ids, imgs, caps):
            report.add("warning", "split_size", f"{split}: {got['ids']} ids / {got['images']} images / "
                       f"{got['captions']} captions, published {ids} / {imgs} / {caps}", split=split)


def _check_pids(report: IntegrityReport, train_records: list, offset: int, ann_file: Path) -> None:
    """Training pids must be contiguous from 0 (the ID classifier indexes pids 0..C-1); sets ``num_classes``."""
    pids = sorted({r.raw_id + offset for r in train_records})
    if pids and pids != list(range(len(pids))):
        gaps = sorted(set(range(pids[-1] + 1)) - set(pids))[:5]
        report.add("error", "pid_contiguity", f"{ann_file}: training pids are not 0..{len(pids) - 1} "
                   f"(min {pids[0]}, max {pids[-1]}, missing e.g. {gaps})", split="train")
    report.stats["num_classes"] = len(pids)
