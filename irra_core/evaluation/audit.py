"""Leak audit: do a model's embeddings (and hence metrics) depend on batch composition?

PHP's EFP attends across the batch axis (SPEC §2.11): with identity-ordered, unshuffled evaluation
loaders, a sample's batch-mates are mostly the same person, which inflates retrieval. A model whose
encoders are per-sample functions gives the same embeddings for any batch size and order. The audit
re-encodes the split with several batch sizes, in annotation order and shuffled, and compares every
run with the batch-size-1 reference (no batch-mates at all).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import nn

from irra_core.evaluation.encode import encode_split, resolve_device
from irra_core.evaluation.evaluate import metrics_from_embeddings
from irra_core.evaluation.metrics import METRIC_KEYS


@dataclass
class LeakAuditReport:
    """Result of :func:`leak_audit`.

    ``runs``: one dict per encoding (``batch_size``, ``shuffled``, ``max_embedding_diff`` - the largest
    relative L2 difference of any caption or image embedding from the batch-size-1 reference - and the
    t2i/i2t metrics). ``metric_spread``: max - min of every metric over the runs (percentage points).
    """

    runs: list
    metric_spread: dict
    max_embedding_diff: float
    flagged: bool
    reasons: list = field(default_factory=list)
    tolerance: float = 1e-4
    metric_tolerance: float = 1e-2
    num_queries: int = 0
    num_gallery: int = 0

    def to_dataframe(self):
        """One row per encoding: ``batch_size, shuffled, max_embedding_diff, t2i_R1 ... i2t_mINP``."""
        import pandas as pd

        return pd.DataFrame(self.runs)

    def summary(self) -> str:
        verdict = "FLAGGED: metrics depend on batch composition" if self.flagged else "clean: batch-invariant"
        lines = [f"Leak audit ({self.num_queries} queries x {self.num_gallery} gallery): {verdict}",
                 f"  largest embedding difference vs batch size 1: {self.max_embedding_diff:.3g} "
                 f"(tolerance {self.tolerance:g})"]
        spread = ", ".join(f"{k} {v:.3f}" for k, v in self.metric_spread.items())
        lines.append(f"  metric spread (pp): {spread}")
        lines += [f"  - {reason}" for reason in self.reasons]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def subset_split(split: dict, max_queries: Optional[int] = None, max_gallery: Optional[int] = None) -> dict:
    """The first identities of ``split`` (in annotation order) that fit both caps, whole identities only.

    ``split``: dict with ``image_pids``, ``img_paths``, ``caption_pids``, ``captions``.
    """
    if max_queries is None and max_gallery is None:
        return split
    q_count: dict = {}
    g_count: dict = {}
    for pid in split["caption_pids"]:
        q_count[pid] = q_count.get(pid, 0) + 1
    for pid in split["image_pids"]:
        g_count[pid] = g_count.get(pid, 0) + 1
    keep, nq, ng = set(), 0, 0
    for pid in dict.fromkeys(split["image_pids"]):  # identities in order of first appearance
        dq, dg = q_count.get(pid, 0), g_count[pid]
        if (max_queries is not None and nq + dq > max_queries) or (max_gallery is not None and ng + dg > max_gallery):
            break
        keep.add(pid)
        nq, ng = nq + dq, ng + dg
    if not keep or nq == 0:
        raise ValueError(f"max_queries={max_queries} / max_gallery={max_gallery} leave no whole identity; raise them")
    g_idx = [i for i, p in enumerate(split["image_pids"]) if p in keep]
    q_idx = [i for i, p in enumerate(split["caption_pids"]) if p in keep]
    return {
        "image_pids": [split["image_pids"][i] for i in g_idx],
        "img_paths": [split["img_paths"][i] for i in g_idx],
        "caption_pids": [split["caption_pids"][i] for i in q_idx],
        "captions": [split["captions"][i] for i in q_idx],
    }


def _relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.norm(dim=1).clamp(min=1e-12)
    return float(((a - b).norm(dim=1) / scale).max()) if len(a) else 0.0


def leak_audit(
    model: nn.Module,
    cfg: Any,
    split: Any = "test",
    *,
    batch_sizes: Sequence[Optional[int]] = (1, 64, None),
    shuffle: bool = True,
    seed: int = 0,
    device: Any = None,
    max_queries: Optional[int] = None,
    max_gallery: Optional[int] = None,
    tolerance: Optional[float] = None,
    metric_tolerance: Optional[float] = None,
    progress: bool = False,
) -> LeakAuditReport:
    """Re-encode ``split`` with each batch size (None = ``cfg.data.test_batch_size``), in annotation
    order and (``shuffle``) in a seeded random order, and compare.

    The reference is batch size 1 in annotation order. ``flagged`` when any embedding differs from it
    by more than ``tolerance`` (relative L2; default 1e-4 in fp32, 2e-2 under CUDA bf16 autocast,
    whose rounding depends on the batch shape) or any metric's spread exceeds ``metric_tolerance``
    (pp; default 0.01 in fp32 — below what one query can move R@K (100/Q pp) but above the ~1e-4 pp that
    float-rounding-level embedding noise can move mAP/mINP through near-tied scores — and 0.5 on CUDA).
    ``max_queries`` / ``max_gallery`` audit the first whole
    identities only, to keep it cheap.
    """
    if isinstance(split, str):
        from irra_core.data import prepare_dataset

        split_dict = getattr(prepare_dataset(cfg), split)
    else:
        split_dict = split
    split_dict = subset_split(split_dict, max_queries, max_gallery)
    dev = resolve_device(device, cfg, model)
    on_gpu = dev.type == "cuda"
    tolerance = tolerance if tolerance is not None else (2e-2 if on_gpu else 1e-4)
    metric_tolerance = metric_tolerance if metric_tolerance is not None else (0.5 if on_gpu else 1e-2)

    sizes = list(dict.fromkeys(bs or cfg.data.test_batch_size for bs in batch_sizes))
    if 1 not in sizes:
        sizes.insert(0, 1)
    settings = [(1, False)] + [(bs, False) for bs in sizes if bs != 1]
    if shuffle:  # batch size 1 has no batch-mates, so its shuffled run would repeat the reference
        settings += [(bs, True) for bs in sizes if bs != 1]

    runs, reference = [], None
    for bs, shuffled in settings:
        encoded = encode_split(model, cfg, split_dict, device=dev, batch_size=bs, shuffle=shuffled, seed=seed,
                               progress=progress)
        if reference is None:
            reference = encoded
        diff = max(_relative_diff(encoded.q_feats, reference.q_feats), _relative_diff(encoded.g_feats, reference.g_feats))
        metrics, _ = metrics_from_embeddings(encoded, topk=0)
        row = {"batch_size": bs, "shuffled": shuffled, "max_embedding_diff": diff}
        row.update({f"{task}_{k}": metrics[task][k] for task in ("t2i", "i2t") for k in METRIC_KEYS})
        runs.append(row)

    keys = [f"{task}_{k}" for task in ("t2i", "i2t") for k in METRIC_KEYS]
    spread = {k: max(r[k] for r in runs) - min(r[k] for r in runs) for k in keys}
    max_diff = max(r["max_embedding_diff"] for r in runs)
    reasons = []
    if max_diff > tolerance:
        worst = max(runs, key=lambda r: r["max_embedding_diff"])
        reasons.append(f"embeddings change with batch composition: {max_diff:.3g} relative difference at "
                       f"batch size {worst['batch_size']}{' shuffled' if worst['shuffled'] else ''}")
    moved = {k: v for k, v in spread.items() if v > metric_tolerance}
    if moved:
        biggest = max(moved, key=moved.get)
        reasons.append(f"{len(moved)} metric(s) change with batch size/order, largest {biggest} by {moved[biggest]:.3f} pp")
    return LeakAuditReport(runs=runs, metric_spread=spread, max_embedding_diff=max_diff, flagged=bool(reasons),
                           reasons=reasons, tolerance=tolerance, metric_tolerance=metric_tolerance,
                           num_queries=len(reference.q_pids), num_gallery=len(reference.g_pids))


def rescoring_audit(q_feats: torch.Tensor, g_feats: torch.Tensor, *, bank_feats: Optional[torch.Tensor] = None,
                    methods: Optional[Sequence[str]] = None, params: Optional[dict] = None, num_probe: int = 20,
                    max_queries: Optional[int] = 200, seed: int = 0):
    """Which re-scoring methods rank a query differently when *other* test queries change?

    A fixed set of ``num_probe`` probe queries is re-scored (:func:`irra_core.evaluation.rescoring.rescore`)
    together with all test queries, then together with each half of the other queries (a seeded random
    split). A method whose probe rankings (the full stable order of the gallery) change reads other test
    queries: it is transductive, whatever its label says. The gallery and the training bank stay fixed.

    Args:
        q_feats: (Q, D) and g_feats: (G, D) features of the test split (normalised here); Q > num_probe + 1.
        bank_feats: (B, D) training-caption features for ``qb_norm`` (left out of the audit when None).
        methods: default every method of :data:`~irra_core.evaluation.rescoring.METHODS`.
        params: ``{method: keyword arguments}``.
        max_queries: audit on a seeded subset of this many test queries (the question is whether other
            queries matter at all, not how much at full size; k-reciprocal costs O(N^2) memory); None: all.

    Returns:
        DataFrame indexed by method: ``transductive`` (the label), ``depends_on_other_queries`` (measured),
        ``probes_reranked`` (share of probe queries whose ranking changed, percent), ``max_score_change``
        and ``label_matches``.
    """
    import pandas as pd

    from irra_core.evaluation.rescoring import METHODS, rescore

    q = torch.nn.functional.normalize(q_feats.double(), dim=1)
    g = torch.nn.functional.normalize(g_feats.double(), dim=1)
    bank = torch.nn.functional.normalize(bank_feats.double(), dim=1) if bank_feats is not None else None
    if methods is None:
        methods = [m for m in METHODS if m != "qb_norm" or bank is not None]
    num_q = len(q)
    if num_q < num_probe + 2:
        raise ValueError(f"rescoring_audit needs more than num_probe + 1 = {num_probe + 1} queries, got {num_q}")
    order = torch.randperm(num_q, generator=torch.Generator().manual_seed(seed))
    if max_queries is not None:
        order = order[:max(max_queries, num_probe + 2)]
    probe, others = order[:num_probe], order[num_probe:]
    halves = (others[: len(others) // 2], others[len(others) // 2:])
    rows = {}
    for method in methods:
        def probe_scores(keep: torch.Tensor) -> torch.Tensor:
            rows_kept = torch.cat([probe, keep])
            scores = rescore(method, q[rows_kept] @ g.T, q_feats=q[rows_kept], g_feats=g, bank_feats=bank,
                             params=(params or {}).get(method))
            return scores[:num_probe]

        full = probe_scores(others)
        full_order = torch.sort(full, dim=1, descending=True, stable=True).indices
        changed = torch.zeros(num_probe, dtype=torch.bool)
        score_change = 0.0
        for half in halves:
            other = probe_scores(half)
            changed |= (torch.sort(other, dim=1, descending=True, stable=True).indices != full_order).any(dim=1)
            score_change = max(score_change, float((other - full).abs().max()))
        label = METHODS[method].transductive
        rows[method] = {"transductive": label, "depends_on_other_queries": bool(changed.any()),
                        "probes_reranked": 100.0 * float(changed.double().mean()), "max_score_change": score_change,
                        "label_matches": bool(changed.any()) == label}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "method"
    return frame
