"""The dataset registry: one :class:`DatasetSpec` per supported dataset, the single source of dataset names.

Every list of dataset names in the project is derived from :data:`SPECS`: ``data.dataset`` and
``data.synthetic_format`` choices (:mod:`irra_core.config`), the parsers (:mod:`irra_core.data.parsers`), the
synthetic generator's formats, ``python -m irra_core.data``, the workbook runner's ``--dataset`` and the
transfer matrix's real datasets. Adding a dataset is one entry here (plus a parser in
:mod:`irra_core.data.parsers` when its annotation file has another layout); the published split sizes that
``check_dataset`` compares against (:data:`irra_core.data.integrity.EXPECTED_COUNTS`) are optional.

It lives in the foundation (imports nothing) so that :mod:`irra_core.config` can validate names without
importing the data layer. Source: IRRA ``datasets/{cuhkpedes,icfgpedes,rstpreid}.py`` (SPEC §1.3).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DatasetSpec", "SPECS", "REAL_DATASETS", "DATASET_CHOICES"]


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset's annotation file is read.

    ``annotation_files``: accepted file names under the dataset folder, the first canonical; ``path_field``:
    the entry field holding the image path; ``train_pid_offset``: a training entry's pid is ``int(id) + offset``.
    """

    name: str
    annotation_files: tuple[str, ...]  # accepted names, first = canonical
    path_field: str
    train_pid_offset: int  # pid = int(id) + offset for training entries


SPECS: dict[str, DatasetSpec] = {
    "CUHK-PEDES": DatasetSpec("CUHK-PEDES", ("reid_raw.json",), "file_path", -1),
    # IRRA's code reads ICFG-PEDES.json while its README names ICFG_PEDES.json: accept both
    "ICFG-PEDES": DatasetSpec("ICFG-PEDES", ("ICFG-PEDES.json", "ICFG_PEDES.json"), "file_path", 0),
    "RSTPReid": DatasetSpec("RSTPReid", ("data_captions.json",), "img_path", 0),
}
#: the real datasets, in registry order
REAL_DATASETS: tuple[str, ...] = tuple(SPECS)
#: what ``data.dataset`` (and the runner's ``--dataset``) accepts: the generated set, then the real ones
DATASET_CHOICES: tuple[str, ...] = ("synthetic", *REAL_DATASETS)
