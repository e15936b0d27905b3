"""Search your own photos: rank every image under a folder by a sentence, with any checkpoint.

``python -m irra_core.search --checkpoint PATH --gallery DIR "a sentence" ["another" ...]``

* the model comes from :func:`irra_core.model.load.load_model` (a workbook run folder, an IRRA/PHP log folder
  or a ``.pth``/``.pt`` file; nothing downloaded);
* every ``.jpg``/``.jpeg``/``.png``/``.webp`` under ``DIR`` (recursively, any letter case) is read with the
  test transform (resize to the model's crop, normalise) and encoded once: the embeddings are cached under
  ``<cache>/search/<key>.pt``, keyed by every file's path, size and modification time, the image size and
  the checkpoint's identity (file, size, mtime), so a second search of an unchanged folder with the same
  checkpoint encodes nothing, and any change (a photo added, edited, removed; another checkpoint) re-encodes;
* an unreadable image is reported by name with the reason and counted; it never stops the search and is
  never silently dropped (it is listed in ``unreadable.csv`` too);
* each sentence is encoded like a test caption and the gallery ranked by cosine similarity (IRRA's
  retrieval, SPEC §1.12); the top-k with scores are printed, written to ``results.csv`` (``query, rank,
  score, path``) and drawn in ``search.png`` (one row per sentence).

The models are trained on pedestrian crops: photos of whole scenes are squeezed into the crop's aspect ratio
(384 x 128 for the paper presets), so crops of single people retrieve best.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from irra_core.cli import UserError
from irra_core.runtime import resolve_device

__all__ = ["IMAGE_SUFFIXES", "find_images", "Gallery", "gallery_key", "encode_gallery", "rank_sentences",
           "plot_search", "search_photos", "SearchResult"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def find_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (recursive; suffixes :data:`IMAGE_SUFFIXES`, any case), sorted.

    Raises:
        UserError: the folder does not exist or holds no image (the message names it and the suffixes).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"--gallery {folder}: no such folder; pass the folder holding your photos")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise UserError(f"--gallery {folder} holds no image ({', '.join(IMAGE_SUFFIXES)}, searched recursively)")
    return files


@dataclass
class Gallery:
    """Encoded photos of one folder.

    Attributes:
        root: the folder.
        paths: the images that were read, in the order of ``feats``.
        feats: (N, D) float32 image features (not normalised), N = ``len(paths)``.
        unreadable: ``[(path, reason)]`` for every file that could not be read (not in ``paths``).
        from_cache: the features were read from the cache, nothing was encoded.
        cache_file: where the cache entry lives (``None`` without a cache).
    """

    root: Path
    paths: list[Path]
    feats: "torch.Tensor"  # noqa: F821
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    from_cache: bool = False
    cache_file: Path | None = None
    total_files: int = 0  # image files under root; more than len(paths) + len(unreadable) with max_images


def gallery_key(files: Sequence[Path], checkpoint_id: dict, img_size: Sequence[int]) -> str:
    """SHA-256 over every file's resolved path, size and mtime, the checkpoint identity and the image size."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"checkpoint": checkpoint_id, "img_size": [int(v) for v in img_size]},
                             sort_keys=True).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def encode_gallery(model, folder: str | Path, *, img_size: Sequence[int], checkpoint_id: dict,
                   device="cpu", batch_size: int = 32, cache_dir: str | Path | None = None,
                   progress: bool = True, max_images: int = 0) -> Gallery:
    """Encode every image under ``folder`` with ``model.encode_image``, or read them from the cache.

    Args:
        model: an eval-mode model with ``encode_image(images (B, 3, H, W)) -> (B, D)``.
        folder: the photo folder (:func:`find_images`).
        img_size: (H, W), the model's crop (``cfg.data.img_size``).
        checkpoint_id: :func:`irra_core.model.load.checkpoint_identity` of the weights (part of the cache key).
        cache_dir: cache folder (``None``: no cache); entries are ``<key>.pt``, written atomically.
        max_images: only the first N files in path order (0: all); the summary says how many were left out.

    Returns:
        A :class:`Gallery`; unreadable files are listed in ``unreadable`` with their reason.

    Raises:
        UserError: none of the folder's images could be read.
    """
    import torch

    from irra_core.io_utils import atomic_torch_save

    folder = Path(folder).expanduser()
    files = find_images(folder)
    total = len(files)
    files = files[:max_images] if max_images and max_images > 0 else files
    key = gallery_key(files, checkpoint_id, img_size)
    cache_file = Path(cache_dir) / f"{key}.pt" if cache_dir is not None else None
    if cache_file is not None and cache_file.exists():
        entry = torch.load(cache_file, map_location="cpu", weights_only=True)
        return Gallery(root=folder, paths=[Path(p) for p in entry["paths"]], feats=entry["feats"],
                       unreadable=[tuple(u) for u in entry["unreadable"]], from_cache=True, cache_file=cache_file,
                       total_files=total)
    paths, feats, unreadable = _encode_files(model, files, img_size, device, batch_size, progress)
    if not paths:
        raise UserError(f"--gallery {folder}: none of its {len(files)} images could be read; first: "
                        f"{unreadable[0][1]}")
    gallery = Gallery(root=folder, paths=paths, feats=feats, unreadable=unreadable,
                      cache_file=cache_file, total_files=total)
    if cache_file is not None:
        atomic_torch_save({"key": key, "paths": [str(p) for p in paths], "feats": gallery.feats,
                           "unreadable": [list(u) for u in unreadable], "checkpoint": checkpoint_id,
                           "img_size": list(img_size)}, cache_file)
    return gallery


def _encode_files(model, files: Sequence[Path], img_size: Sequence[int], device, batch_size: int,
                  progress: bool) -> tuple[list[Path], "torch.Tensor | None", list[tuple[str, str]]]:  # noqa: F821
    """Read and encode ``files`` in batches: ``(paths read, (N, D) float32 features or None, [(path, reason)])``."""
    import torch
    from tqdm.auto import tqdm

    from irra_core.data import build_transforms
    from irra_core.data.errors import ImageReadError
    from irra_core.data.images import read_image

    transform = build_transforms(tuple(img_size), is_train=False)
    paths, feats, unreadable = [], [], []
    model.eval()
    batch, batch_paths = [], []

    def flush() -> None:
        if batch:
            with torch.no_grad():
                feats.append(model.encode_image(torch.stack(batch).to(device)).float().cpu())
            paths.extend(batch_paths)
            batch.clear()
            batch_paths.clear()

    for path in tqdm(files, desc="encoding photos", unit="img", disable=not progress):
        try:
            image = read_image(path)
        except ImageReadError as exc:
            unreadable.append((str(path), str(exc).split(";")[0].replace(f"image file {path} ", "")))
            continue
        batch.append(transform(image))
        batch_paths.append(path)
        if len(batch) == batch_size:
            flush()
    flush()
    return paths, torch.cat(feats) if feats else None, unreadable


def rank_sentences(model, gallery: Gallery, sentences: Sequence[str], *, top_k: int = 10, context_length: int = 77,
                   device="cpu"):
    """Rank the gallery for each sentence (cosine similarity, best first).

    Returns:
        A DataFrame with one row per (sentence, rank): ``query, rank (1-based), score (cosine), path``.

    Raises:
        UserError: no sentence, or an empty one.
    """
    import pandas as pd

    from irra_core.viz.retrieval import rank_free_text

    if not sentences or any(not s.strip() for s in sentences):
        raise UserError("give at least one non-empty sentence, e.g. \"a woman in a red coat with a black backpack\"")
    k = min(int(top_k), len(gallery.paths))
    idx, scores = rank_free_text(model, list(sentences), gallery.feats, top_k=k, context_length=context_length,
                                 device=device)
    rows = [{"query": s, "rank": r + 1, "score": float(scores[q, r]), "path": str(gallery.paths[int(idx[q, r])])}
            for q, s in enumerate(sentences) for r in range(k)]
    return pd.DataFrame(rows, columns=["query", "rank", "score", "path"])


def plot_search(table, img_size: Sequence[int], *, top_k: int | None = None, title: str | None = None):
    """One row per sentence: its top-k photos (grey frames: no identity to check) with their cosine scores."""
    import numpy as np
    from PIL import Image

    from irra_core.viz.retrieval import plot_topk_gallery

    order = list(dict.fromkeys(table["path"]))
    position = {p: i for i, p in enumerate(order)}
    h, w = (int(v) for v in img_size)

    def load(index: int) -> np.ndarray:
        try:
            with Image.open(order[index]) as im:
                return np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
        except OSError:  # removed or changed since it was encoded: a grey panel, the CSV still names it
            return np.full((h, w, 3), 0.5, dtype=np.float32)

    rows = [{"caption": query, "pid": None, "top10_indices": [position[p] for p in group["path"]],
             "top10_scores": list(group["score"])}
            for query, group in table.groupby("query", sort=False)]
    k = top_k or max(len(r["top10_indices"]) for r in rows)
    return plot_topk_gallery(rows, load, [-1] * len(order), top_k=k, n_gt=0, title=title)


@dataclass
class SearchResult:
    """What :func:`search_photos` produced: the ranking, the gallery, the files written."""

    table: "pd.DataFrame"  # noqa: F821
    gallery: Gallery
    out_dir: Path
    csv: Path
    figure: Path
    model: object = None
    fig: object = None  # the matplotlib Figure saved as ``figure``

    def summary(self) -> str:
        g = self.gallery
        lines = [f"gallery {g.root}: {len(g.paths)} images "
                 f"({'embeddings from the cache' if g.from_cache else 'encoded'}"
                 f"{', cached in ' + str(g.cache_file) if g.cache_file and not g.from_cache else ''})"]
        searched = len(g.paths) + len(g.unreadable)
        if g.total_files > searched:
            lines.append(f"only the first {searched} of {g.total_files} image files were searched (max_images)")
        if g.unreadable:
            lines.append(f"{len(g.unreadable)} unreadable image(s), left out of the ranking:")
            lines += [f"  {path}: {reason}" for path, reason in g.unreadable]
        for query, group in self.table.groupby("query", sort=False):
            lines.append(f'"{query}"')
            lines += [f"  {r.rank:>3}  {r.score:.4f}  {r.path}" for r in group.itertuples()]
        lines.append(f"written: {self.csv}, {self.figure}")
        return "\n".join(lines)


def search_photos(checkpoint: str | Path, gallery: str | Path, sentences: Sequence[str], *, top_k: int = 10,
                  out_dir: str | Path | None = None, device: str = "auto", cache_dir: str | Path | None = "default",
                  batch_size: int = 32, which: str = "best", model=None, progress: bool = True,
                  max_images: int = 0) -> SearchResult:
    """Load ``checkpoint``, encode (or reuse) the photos under ``gallery``, rank them for each sentence, and write
    ``results.csv``, ``unreadable.csv`` and ``search.png`` into ``out_dir`` (default
    ``outputs/search/<YYYYmmdd-HHMMSS>``).

    Args:
        cache_dir: ``"default"`` = ``<IRRA_CACHE or ~/.cache/irra_workbook>/search``; ``None`` = no cache.
        model: an already loaded model for ``checkpoint`` (the notebook reuses one across searches).
        max_images: search only the first N image files in path order (0: all; said in the summary).

    Raises:
        UserError: no gallery folder / images / sentence; FileNotFoundError, ValueError: see
        :func:`irra_core.model.load.load_model`.
    """
    import pandas as pd

    from irra_core.io_utils import atomic_write_text
    from irra_core.model.load import checkpoint_identity, load_model
    from irra_core.paths import cache_dir as default_cache, runs_dir
    from irra_core.viz.style import save_figure

    if not sentences or any(not s.strip() for s in sentences):
        raise UserError("give at least one non-empty sentence, e.g. \"a woman in a red coat with a black backpack\"")
    find_images(gallery)  # a bad folder fails before the model is loaded
    dev = resolve_device(device)
    if model is None:
        model = load_model(checkpoint, checkpoint=which, device=dev)
    cfg = model.cfg
    cache = default_cache() / "search" if cache_dir == "default" else cache_dir
    encoded = encode_gallery(model, gallery, img_size=cfg.data.img_size, device=dev, batch_size=batch_size,
                             checkpoint_id=checkpoint_identity(checkpoint, which), cache_dir=cache, progress=progress,
                             max_images=max_images)
    table = rank_sentences(model, encoded, sentences, top_k=top_k, context_length=cfg.data.text_length, device=dev)
    out = Path(out_dir) if out_dir else runs_dir().parent / "search" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "results.csv"
    atomic_write_text(csv, table.to_csv(index=False))
    atomic_write_text(out / "unreadable.csv", pd.DataFrame(encoded.unreadable, columns=["path", "reason"])
                      .to_csv(index=False))
    fig = plot_search(table, cfg.data.img_size, title=f"{Path(checkpoint).name}: {len(encoded.paths)} photos")
    figure = save_figure(fig, out / "search.png")
    return SearchResult(table=table, gallery=encoded, out_dir=out, csv=csv, figure=figure, model=model, fig=fig)
