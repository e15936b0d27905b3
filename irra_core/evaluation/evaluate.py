"""One evaluation of a model on a split: encode (or reuse cached embeddings), rank both ways, write
``metrics.json`` and ``queries.csv``."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from irra_core.evaluation.bootstrap import DEFAULT_RESAMPLES, bootstrap_table
from irra_core.evaluation.encode import EncodedSplit, encode_split
from irra_core.evaluation.metrics import METRIC_KEYS, rank_per_query, summarize
from irra_core.evaluation.report import write_queries_csv
from irra_core.io_utils import atomic_torch_save, atomic_write_json


def model_fingerprint(model: nn.Module) -> str:
    """Short SHA-1 of the model's parameters and buffers (names, shapes, values): a checkpoint key."""
    digest = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _cache_path(cache_dir: Path, key: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)
    return cache_dir / f"embeddings-{safe}.pt"


def load_or_encode(
    model: nn.Module,
    cfg: Any,
    split: Any = "test",
    *,
    device: Any = None,
    batch_size: Optional[int] = None,
    shuffle: bool = False,
    cache_dir: str | Path | None = None,
    cache_key: str | None = None,
    progress: bool = False,
) -> EncodedSplit:
    """Embeddings of ``split`` from ``cache_dir`` when cached under ``cache_key``, else encode and cache.

    Default key: model fingerprint + split name + batch size (+ "shuffled"), so a new checkpoint never
    reuses stale embeddings.
    """
    if cache_dir is not None:
        if cache_key is None:
            split_name = split if isinstance(split, str) else "split"
            bs = batch_size or cfg.data.test_batch_size
            cache_key = f"{model_fingerprint(model)}-{split_name}-bs{bs}" + ("-shuffled" if shuffle else "")
        path = _cache_path(Path(cache_dir), cache_key)
        if path.exists():
            return EncodedSplit.from_dict(torch.load(path, map_location="cpu", weights_only=False))
    encoded = encode_split(model, cfg, split, device=device, batch_size=batch_size, shuffle=shuffle,
                           progress=progress)
    if cache_dir is not None:
        atomic_torch_save(encoded.to_dict(), path)
    return encoded


def metrics_from_embeddings(encoded: EncodedSplit, *, i2t: bool = True, topk: int = 10, bootstrap: int = 0,
                            bootstrap_seed: int = 0):
    """t2i (and i2t) metrics from embeddings, cosine similarity, plus the t2i per-query results.

    Returns ``(metrics, per_query)`` with ``metrics = {"t2i": {...}, "i2t": {...}, "t2i_cmc": [...],
    "i2t_cmc": [...]}`` (percent) and ``per_query`` a :class:`~irra_core.evaluation.metrics.PerQueryRanks`.
    With ``bootstrap`` resamples (> 0) ``metrics`` also holds ``"ci": {"t2i": {metric: [low, high]}, "i2t": ...}``
    (95% percentile intervals over identities, :mod:`irra_core.evaluation.bootstrap`) and ``"bootstrap"`` (its
    settings: ``n_resamples``, ``seed``, ``level``, ``unit``...).
    """
    q = torch.nn.functional.normalize(encoded.q_feats.float(), dim=1)
    g = torch.nn.functional.normalize(encoded.g_feats.float(), dim=1)
    per_query = rank_per_query(q_pids=encoded.q_pids, g_pids=encoded.g_pids, q_feats=q, g_feats=g, topk=topk)
    t2i = summarize(per_query, len(g))
    metrics: dict = {"t2i": {k: t2i[k] for k in METRIC_KEYS}, "t2i_cmc": t2i["cmc"]}
    tables = {"t2i": (per_query, encoded.q_pids)}
    if i2t:
        per_image = rank_per_query(q_pids=encoded.g_pids, g_pids=encoded.q_pids, q_feats=g, g_feats=q)
        back = summarize(per_image, len(q))
        metrics["i2t"] = {k: back[k] for k in METRIC_KEYS}
        metrics["i2t_cmc"] = back["cmc"]
        tables["i2t"] = (per_image, encoded.g_pids)
    if bootstrap:
        results = {task: bootstrap_table(ranks, pids, n_resamples=bootstrap, seed=bootstrap_seed)
                   for task, (ranks, pids) in tables.items()}
        metrics["ci"] = {task: result.intervals() for task, result in results.items()}
        metrics["bootstrap"] = results["t2i"].settings()
    return metrics, per_query


def query_rows(encoded: EncodedSplit, per_query) -> list[dict]:
    """Rows of ``queries.csv``: per caption its first correct rank, AP, INP and top-10 gallery items."""
    rows = []
    for i in range(len(encoded.q_pids)):
        rows.append({
            "query_index": i,
            "pid": int(encoded.q_pids[i]),
            "caption": encoded.captions[i] if i < len(encoded.captions) else "",
            "first_hit_rank": int(per_query.first_hit_rank[i]),
            "AP": round(float(per_query.ap[i]), 6),
            "INP": round(float(per_query.inp[i]), 6),
            "top10_indices": [int(x) for x in per_query.topk_indices[i]],
            "top10_scores": [round(float(x), 6) for x in per_query.topk_scores[i]],
        })
    return rows


def evaluate(
    model: nn.Module,
    cfg: Any,
    split: Any = "test",
    *,
    device: Any = None,
    batch_size: Optional[int] = None,
    out_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    cache_key: str | None = None,
    i2t: bool = True,
    shuffle: bool = False,
    progress: bool = False,
    bootstrap: int = DEFAULT_RESAMPLES,
    bootstrap_seed: int = 0,
) -> dict:
    """Evaluate ``model`` on ``split`` with IRRA's metrics, both retrieval directions.

    Captions are queries and images the gallery (t2i); i2t swaps the roles. Embeddings are
    L2-normalised and compared by cosine similarity, ranked exactly in bounded memory (ties: lower
    gallery index first). With ``cache_dir`` embeddings are stored / reused (see
    :func:`load_or_encode`). With ``out_dir`` writes ``metrics.json`` (the returned dict plus CMC
    curves and sizes) and ``queries.csv`` (see :func:`irra_core.evaluation.report.load_queries`;
    gallery indices refer to the encoded gallery, i.e. ``split["img_paths"]`` in annotation order).
    ``metrics.json`` also holds ``"ci"`` (95% intervals next to each point estimate, from ``bootstrap``
    resamples of identities with seed ``bootstrap_seed``; 0 turns them off) and ``"bootstrap"`` (those settings).

    Returns ``{"t2i": {"R1", "R5", "R10", "mAP", "mINP"}, "i2t": {...}}`` in percent.
    """
    encoded = load_or_encode(model, cfg, split, device=device, batch_size=batch_size, shuffle=shuffle,
                             cache_dir=cache_dir, cache_key=cache_key, progress=progress)
    metrics, per_query = metrics_from_embeddings(encoded, i2t=i2t, bootstrap=bootstrap if out_dir is not None else 0,
                                                 bootstrap_seed=bootstrap_seed)
    result = {task: metrics[task] for task in ("t2i", "i2t") if task in metrics}
    if out_dir is not None:
        out_dir = Path(out_dir)
        record = dict(result)
        record.update({k: v for k, v in metrics.items() if k.endswith("_cmc") or k in ("ci", "bootstrap")})
        record.update(split=split if isinstance(split, str) else "custom", num_queries=len(encoded.q_pids),
                      num_gallery=len(encoded.g_pids), batch_size=batch_size or cfg.data.test_batch_size,
                      shuffled=shuffle, tie_rule="equal scores: lower gallery index ranks first")
        atomic_write_json(out_dir / "metrics.json", record)
        write_queries_csv(out_dir / "queries.csv", query_rows(encoded, per_query))
    return result
