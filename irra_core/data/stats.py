"""Summary tables (pandas DataFrames) of a parsed dataset, for the exploration notebook."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from irra_core.data.parsers import PedesDataset
from irra_core.data.tokenizer import token_length

SPLITS = ("train", "val", "test")


def _rows(ds: PedesDataset) -> list[dict[str, Any]]:
    """One row per caption: split, pid, img_path, caption (train pids are IRRA's remapped pids)."""
    rows = [{"split": "train", "pid": pid, "img_path": path, "caption": cap} for pid, _, path, cap in ds.train]
    for split in ("val", "test"):
        data = getattr(ds, split)
        per_image = _captions_per_image(ds, split)
        k = 0
        for pid, path, n in zip(data["image_pids"], data["img_paths"], per_image):
            for cap in data["captions"][k:k + n]:
                rows.append({"split": split, "pid": pid, "img_path": path, "caption": cap})
            k += n
    return rows


def _captions_per_image(ds: PedesDataset, split: str) -> list[int]:
    if ds.records:
        return [len(r.captions) for r in ds.records if r.split == split]
    data = getattr(ds, split)  # without records assume an even number of captions per image
    n = len(data["captions"]) // max(1, len(data["img_paths"]))
    return [n] * len(data["img_paths"])


def split_summary(ds: PedesDataset) -> pd.DataFrame:
    """Identities, images and captions per split (IRRA's ``show_dataset_info``).

    Returns:
        DataFrame indexed by split with columns ``ids``, ``images``, ``captions``.
    """
    out = {"train": {"ids": len({t[0] for t in ds.train}), "images": len({t[1] for t in ds.train}),
                     "captions": len(ds.train)}}
    for split in ("val", "test"):
        d = getattr(ds, split)
        out[split] = {"ids": len(set(d["image_pids"])), "images": len(d["img_paths"]), "captions": len(d["captions"])}
    return pd.DataFrame.from_dict(out, orient="index")[["ids", "images", "captions"]].rename_axis("split")


def caption_lengths(ds: PedesDataset, context_length: int = 77) -> pd.DataFrame:
    """One row per caption: ``split``, ``pid``, ``caption``, ``tokens`` (untruncated, SOT/EOT
    included), ``words`` and ``truncated`` (tokens > ``context_length``)."""
    df = pd.DataFrame(_rows(ds))
    df["tokens"] = [token_length(c) for c in df["caption"]]
    df["words"] = df["caption"].str.split().str.len()
    df["truncated"] = df["tokens"] > context_length
    return df.drop(columns=["img_path"])


def truncation_summary(ds: PedesDataset, context_length: int = 77) -> pd.DataFrame:
    """Per split: mean / median / p95 / max token length and the truncation rate at ``context_length``."""
    df = caption_lengths(ds, context_length)
    g = df.groupby("split", sort=False)["tokens"]
    out = pd.DataFrame({"captions": g.size(), "mean": g.mean(), "median": g.median(), "p95": g.quantile(0.95),
                        "max": g.max(), "truncation_rate": df.groupby("split", sort=False)["truncated"].mean()})
    out.attrs["context_length"] = context_length
    return out


def images_per_identity(ds: PedesDataset) -> pd.DataFrame:
    """One row per (split, pid): ``images`` and ``captions``."""
    df = pd.DataFrame(_rows(ds))
    return (df.groupby(["split", "pid"], sort=False)
              .agg(images=("img_path", "nunique"), captions=("caption", "size")).reset_index())


def attribute_table(ds_or_root: PedesDataset | str | Path) -> pd.DataFrame | None:
    """Attributes of each identity of a synthetic set (``attributes.json``), one row per raw id.

    Returns None for real datasets, which carry no attributes.
    """
    root = Path(ds_or_root.root if isinstance(ds_or_root, PedesDataset) else ds_or_root)
    path = root / "attributes.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return pd.DataFrame(data["identities"]).set_index("id").sort_index()
