"""Parsers of CUHK-PEDES, ICFG-PEDES and RSTPReid with IRRA's split and pid rules (SPEC §1.3).

| dataset    | annotation file                               | path field  | train pid   | splits          |
|------------|-----------------------------------------------|-------------|-------------|-----------------|
| CUHK-PEDES | ``reid_raw.json``                             | file_path   | ``id - 1``  | train/val/test  |
| ICFG-PEDES | ``ICFG-PEDES.json`` (or ``ICFG_PEDES.json``)  | file_path   | ``id``      | train/test      |
| RSTPReid   | ``data_captions.json``                        | img_path    | ``id``      | train/val/test  |

Any split other than ``train``/``test`` counts as val (as in IRRA). Test/val pids are the raw ids.
Training samples are one ``(pid, image_id, img_path, caption)`` per caption, ``image_id`` a running
counter over training entries. Ids are sorted explicitly (IRRA relied on CPython's set order).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from irra_core.data.errors import DatasetError
from irra_core.datasets import SPECS, DatasetSpec  # the registry (one entry per dataset)
from irra_core.io_utils import read_json


_ALIASES = {k.lower().replace("-", "").replace("_", ""): k for k in SPECS}


def canonical_name(name: str) -> str:
    """``"cuhk_pedes"`` -> ``"CUHK-PEDES"``; unknown names raise naming the choices."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in _ALIASES:
        raise DatasetError(f"unknown dataset name {name!r}; choose one of {sorted(SPECS)} "
                           f"(or 'synthetic' through prepare_dataset)")
    return _ALIASES[key]


@dataclass
class Record:
    """One annotation entry: an image with its captions."""

    index: int  # position in the annotation file
    split: str  # train | val | test (IRRA's rule: anything else is val)
    raw_id: int
    img_path: Path  # absolute
    rel_path: str
    captions: list[str]


@dataclass
class PedesDataset:
    """A parsed dataset in IRRA's layout.

    ``train``: list of ``(pid, image_id, img_path, caption)`` (one per caption, pids 0..C-1);
    ``val``/``test``: dicts of lists ``image_pids``, ``img_paths`` (gallery, one per entry),
    ``caption_pids``, ``captions`` (queries, one per caption), in annotation order.
    """

    name: str
    root: Path  # the dataset folder
    annotation_file: Path
    train: list[tuple[int, int, str, str]]
    val: dict[str, list]
    test: dict[str, list]
    num_classes: int
    records: list[Record] = field(default_factory=list, repr=False)
    #: set by :func:`irra_core.data.subsets.first_identities` (``{"max_identities", "identities"}``)
    subset: dict | None = None
    #: set by :func:`irra_core.data.subsets.hold_out_identities` (``{"identities", "seed", "raw_ids", ...}``)
    val_from_train: dict | None = None

    @property
    def train_id_container(self) -> list[int]:
        return sorted({pid for pid, *_ in self.train})


def resolve_dataset_dir(name: str, root: str | Path) -> tuple[Path, Path]:
    """Find ``(dataset_dir, annotation_file)``; ``root`` may be the dataset folder or its parent.

    Raises:
        DatasetError: no accepted annotation file. The message names what *is* there: another release's
            annotation file (CUHK-PEDES' ``caption_all.json`` or ``CUHK-PEDES.json``) with the fields it has
            or lacks and the exact rename, any other JSON file, or a dataset folder spelt differently.
    """
    spec = SPECS[canonical_name(name)]
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset root {root} does not exist; pass the folder holding {spec.name}/ "
                           f"(or the {spec.name} folder itself)")
    for candidate in (root / spec.name, root):
        for fname in spec.annotation_files:
            if (candidate / fname).is_file():
                return candidate.resolve(), (candidate / fname).resolve()
    wanted = " or ".join(spec.annotation_files)
    message = (f"annotation file {wanted} not found in {root / spec.name} nor in {root}; "
               f"expected <root>/{spec.name}/{spec.annotation_files[0]} with images under imgs/")
    hints = _annotation_hints(spec, root)
    raise DatasetError(message + ("\n\n" + "\n\n".join(hints) if hints else ""))


#: annotation files of other releases, by dataset: what each one is (SPEC §1.3; littlexinyi/MGCC#3,
#: ShuangLI59/Person-Search-with-Natural-Language-Description#5)
OTHER_RELEASES: dict[str, dict[str, str]] = {
    "CUHK-PEDES": {
        "caption_all.json": "the original CUHK-PEDES release's annotation file (IRRA reads reid_raw.json: the "
                            "same entries plus a 'split' field, 11,003 / 1,000 / 1,000 identities)",
        "CUHK-PEDES.json": "reid_raw.json under the name some follow-up works use",
    },
}
_NOT_ANNOTATIONS = {"manifest.json", "attributes.json"}  # the synthetic generator's own files


def _annotation_hints(spec: DatasetSpec, root: Path) -> list[str]:
    """What to do about the files that are there instead of the expected annotation file."""
    hints: list[str] = []
    norm = spec.name.lower().replace("-", "").replace("_", "")
    if root.is_dir() and not (root / spec.name).exists():
        for child in sorted(p for p in root.iterdir() if p.is_dir()):
            if child.name.lower().replace("-", "").replace("_", "") == norm:
                hints.append(f"found the folder {child}: rename it to {root / spec.name} "
                             f"(or pass --root {child})")
    canonical = spec.annotation_files[0]
    for folder in (root / spec.name, root):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            if path.name in _NOT_ANNOTATIONS:
                continue
            about = OTHER_RELEASES.get(spec.name, {}).get(path.name)
            fields, problem = _json_fields(path)
            needed = ["split", "id", spec.path_field, "captions"]
            lead = f"found {path}" + (f", {about}" if about else "")
            if problem:
                hints.append(f"{lead}; it is not a list of annotation entries ({problem})")
                continue
            lacking = [f for f in needed if f not in fields]
            if not lacking:
                hints.append(f"{lead}; it has every field {spec.name} needs ({', '.join(needed)}): rename it with "
                             f"`mv {path} {path.parent / canonical}`")
            elif lacking == ["split"]:
                hints.append(f"{lead}; its entries lack the 'split' field (train/val/test), so the splits cannot "
                             f"be told apart: put {canonical} (from the dataset's authors) at "
                             f"{path.parent / canonical}, or add a 'split' field to every entry and save the file "
                             f"as {canonical}")
            else:
                hints.append(f"{lead}; its entries lack the field(s) {lacking} (fields present: {sorted(fields)}); "
                             f"{spec.name} needs {needed} in {canonical}")
    return hints


def _json_fields(path: Path) -> tuple[set[str], str]:
    """Fields of the first entries of a JSON list file, or ``(set(), why it is not one)``."""
    try:
        entries = read_json(path, what="annotation file")
    except (OSError, ValueError) as exc:
        return set(), str(exc)
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries[:50]):
        return set(), f"a JSON {type(entries).__name__}" + (" with no entries" if entries == [] else "")
    fields: set[str] = set(entries[0])
    for entry in entries[1:50]:
        fields &= set(entry)
    return fields, ""


def read_records(name: str, root: str | Path) -> tuple[Path, Path, list[Record]]:
    """Read and validate every annotation entry (no image is opened here).

    Raises:
        DatasetError: missing folder/file, malformed JSON, or an entry without a valid
            ``split``/``id``/path/``captions`` field (the message names file, entry and field).
    """
    spec = SPECS[canonical_name(name)]
    dataset_dir, ann_file = resolve_dataset_dir(spec.name, root)
    img_dir = dataset_dir / "imgs"
    if not img_dir.is_dir():
        raise DatasetError(f"image folder {img_dir} does not exist; {spec.name} keeps its images under imgs/")
    try:
        entries = read_json(ann_file, what="annotation file")
    except ValueError as exc:
        raise DatasetError(str(exc) + "; re-download or regenerate the annotation file") from exc
    if not isinstance(entries, list):
        raise DatasetError(f"{ann_file}: expected a JSON list of entries, got {type(entries).__name__}")
    return dataset_dir, ann_file, [_parse_entry(i, e, spec, ann_file, img_dir) for i, e in enumerate(entries)]


def _parse_entry(i: int, entry: Any, spec: DatasetSpec, ann_file: Path, img_dir: Path) -> Record:
    where = f"{ann_file}: entry {i}"
    if not isinstance(entry, dict):
        raise DatasetError(f"{where} is {type(entry).__name__}, expected an object")
    for key in ("split", "id", spec.path_field, "captions"):
        if key not in entry:
            hint = " (RSTPReid names it 'img_path')" if key == "img_path" else ""
            raise DatasetError(f"{where} has no field {key!r}{hint}; fields present: {sorted(entry)}")
    try:
        raw_id = int(entry["id"])
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: field 'id' = {entry['id']!r} is not an integer") from None
    rel = entry[spec.path_field]
    if not isinstance(rel, str) or not rel:
        raise DatasetError(f"{where}: field {spec.path_field!r} = {rel!r} is not a file path")
    caps = entry["captions"]
    if not isinstance(caps, list) or not caps:
        raise DatasetError(f"{where} ({rel}): field 'captions' must be a non-empty list, got {caps!r}")
    for k, cap in enumerate(caps):
        if not isinstance(cap, str) or not cap.strip():
            raise DatasetError(f"{where} ({rel}): caption {k} in field 'captions' is empty or not a string: {cap!r}")
    split = entry["split"]
    split = split if split in ("train", "test") else "val"
    return Record(i, split, raw_id, (img_dir / rel).resolve(), rel, list(caps))


def build_from_records(name: str, dataset_dir: Path, ann_file: Path, records: list[Record],
                       train_pids: dict[int, int] | None = None) -> PedesDataset:
    """Apply IRRA's split and pid rules to parsed records.

    Args:
        train_pids: raw training id -> pid (default IRRA's rule, ``int(id) + offset``, checked contiguous);
            a subset or a held-out validation split passes its own renumbering.
    """
    spec = SPECS[canonical_name(name)]
    train: list[tuple[int, int, str, str]] = []
    image_id = 0
    for rec in records:
        if rec.split != "train":
            continue
        pid = train_pids[rec.raw_id] if train_pids is not None else rec.raw_id + spec.train_pid_offset
        for cap in rec.captions:
            train.append((pid, image_id, str(rec.img_path), cap))
        image_id += 1
    train_ids = sorted({t[0] for t in train})
    # IRRA asserts that training pids are exactly 0..C-1 (the ID classifier indexes them)
    if train_ids != list(range(len(train_ids))):
        missing = sorted(set(range(max(train_ids) + 1)) - set(train_ids))[:5] if train_ids else []
        rule = f"int(id){spec.train_pid_offset:+d}" if spec.train_pid_offset else "int(id)"
        raise DatasetError(f"{ann_file}: training pids are not contiguous from 0 (first {train_ids[:3]}, "
                           f"missing e.g. {missing}); {spec.name} uses train pid = {rule}, so training ids "
                           f"must run without gaps")
    return PedesDataset(name=spec.name, root=dataset_dir, annotation_file=ann_file, train=train,
                        val=_eval_split(records, "val"), test=_eval_split(records, "test"),
                        num_classes=len(train_ids), records=records)


def _eval_split(records: list[Record], split: str) -> dict[str, list]:
    out: dict[str, list] = {"image_pids": [], "img_paths": [], "caption_pids": [], "captions": []}
    for rec in records:
        if rec.split != split:
            continue
        out["image_pids"].append(rec.raw_id)
        out["img_paths"].append(str(rec.img_path))
        out["caption_pids"].extend([rec.raw_id] * len(rec.captions))
        out["captions"].extend(rec.captions)
    return out


def build_dataset(name: str, root: str | Path) -> PedesDataset:
    """Parse a real dataset (or a synthetic one written in its format).

    Args:
        name: ``CUHK-PEDES`` | ``ICFG-PEDES`` | ``RSTPReid`` (case/dash-insensitive).
        root: the dataset folder or the folder holding it.
    """
    dataset_dir, ann_file, records = read_records(name, root)
    return build_from_records(name, dataset_dir, ann_file, records)
