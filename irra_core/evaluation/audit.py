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

from irra_core.evaluation.encode import EncodedSplit, _autocast, encode_split, resolve_device
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


def _audited_split(cfg: Any, split: Any, max_queries: Optional[int], max_gallery: Optional[int]) -> dict:
    """The split dict (``"val"``/``"test"`` of ``prepare_dataset(cfg)``, or a dict) cut to whole identities."""
    if isinstance(split, str):
        from irra_core.data import prepare_dataset

        split = getattr(prepare_dataset(cfg), split)
    return subset_split(split, max_queries, max_gallery)


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
    split_dict = _audited_split(cfg, split, max_queries, max_gallery)
    dev = resolve_device(device, cfg, model)
    on_gpu = dev.type == "cuda"
    tolerance = tolerance if tolerance is not None else (2e-2 if on_gpu else 1e-4)
    metric_tolerance = metric_tolerance if metric_tolerance is not None else (0.5 if on_gpu else 1e-2)

    settings = _audit_settings(batch_sizes, cfg.data.test_batch_size, shuffle)
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
    return _audit_verdict(runs, tolerance, metric_tolerance, len(reference.q_pids), len(reference.g_pids))


def _audit_settings(batch_sizes: Sequence[Optional[int]], default: int, shuffle: bool) -> list[tuple[int, bool]]:
    """(batch size, shuffled) of each encoding: batch size 1 in annotation order first (the reference)."""
    sizes = list(dict.fromkeys(bs or default for bs in batch_sizes))
    if 1 not in sizes:
        sizes.insert(0, 1)
    settings = [(1, False)] + [(bs, False) for bs in sizes if bs != 1]
    if shuffle:  # batch size 1 has no batch-mates, so its shuffled run would repeat the reference
        settings += [(bs, True) for bs in sizes if bs != 1]
    return settings


def _audit_verdict(runs: list[dict], tolerance: float, metric_tolerance: float, num_queries: int,
                   num_gallery: int) -> LeakAuditReport:
    """Flag the runs whose embeddings or metrics move with the batch (see :func:`leak_audit`)."""
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
                           num_queries=num_queries, num_gallery=num_gallery)


def _loader_orders(cfg: Any, split: Any, shuffled: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gallery order (G,), query order (Q,)): the split index of each item in the order the evaluation loaders
    of ``build_eval_loaders(cfg, split, shuffle=shuffled, seed=seed)`` yield them (any batch size)."""
    from irra_core.data import build_eval_loaders

    gallery, query = build_eval_loaders(cfg, split, shuffle=shuffled, seed=seed)
    return tuple(torch.as_tensor(d.order, dtype=torch.long) if d.order is not None
                 else torch.arange(len(d)) for d in (gallery.dataset, query.dataset))


@torch.no_grad()
def _efp_in_batches(model: nn.Module, base: torch.Tensor, unified: torch.Tensor, order: torch.Tensor, batch_size: int,
                    modality: str, device: torch.device) -> torch.Tensor:
    """Global features (N, D) in annotation order: EFP run on consecutive ``batch_size`` chunks of ``order``."""
    out = torch.empty_like(base)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        with _autocast(device):
            feats = model.efp_global(base[rows].to(device), unified[rows].to(device), modality)
        out[rows] = feats.float().cpu()
    return out


@torch.no_grad()
def encode_arrangements(
    model: nn.Module,
    cfg: Any,
    split: Any = "test",
    arrangements: Sequence[tuple[int, bool]] = ((64, False), (64, True)),
    *,
    seed: int = 0,
    device: Any = None,
    progress: bool = False,
) -> dict[tuple[int, bool], EncodedSplit]:
    """Encode ``split`` once per arrangement ``(batch_size, shuffled)`` of its samples into evaluation batches.

    Each result equals ``encode_split(model, cfg, split, batch_size=..., shuffle=..., seed=seed)``. A model with
    :meth:`~irra_core.model.php.PHP.efp_inputs` (PHP) runs its towers and CRFM once per sample and only its EFP
    once per arrangement, in the batches the evaluation loaders would form: only EFP can mix the samples of a
    batch (``model.efp_attention="batch"``, SPEC §2.11), and it costs a small fraction of the towers, so a batch-
    size sweep costs about one encoding. Other models are encoded in full for every arrangement.
    ``tests/test_leak_curve.py`` checks both paths against :func:`encode_split` (equal to 1e-5).

    Args:
        split: ``"val"`` | ``"test"`` or a split dict (as :func:`encode_split`).
        arrangements: ``(batch_size, shuffled)`` pairs; shuffled orders are the seeded ones of
            ``irra_core.data.build_eval_loaders(..., shuffle=True, seed=seed)``.

    Returns:
        ``{(batch_size, shuffled): EncodedSplit}``, embeddings (Q, D) / (G, D) float32 in annotation order.

    Raises:
        ValueError: a batch size below 1.
    """
    dev = resolve_device(device, cfg, model)
    arrangements = [(int(bs), bool(sh)) for bs, sh in arrangements]
    bad = [bs for bs, _ in arrangements if bs < 1]
    if bad:
        raise ValueError(f"evaluation batch sizes must be >= 1, got {bad}")
    if not hasattr(model, "efp_inputs"):
        return {(bs, sh): encode_split(model, cfg, split, device=dev, batch_size=bs, shuffle=sh, seed=seed,
                                       progress=progress) for bs, sh in arrangements}
    staged = encode_split(_EFPInputs(model), cfg, split, device=dev, seed=seed, progress=progress)
    d = model.embed_dim
    q_base, q_unified = staged.q_feats[:, :d], staged.q_feats[:, d:].reshape(len(staged.q_feats), -1, d)
    g_base, g_unified = staged.g_feats[:, :d], staged.g_feats[:, d:].reshape(len(staged.g_feats), -1, d)
    was_training = model.training
    model.eval()
    results = {}
    orders = {shuffled: _loader_orders(cfg, split, shuffled, seed) for shuffled in {sh for _, sh in arrangements}}
    try:
        for bs, shuffled in arrangements:
            g_order, q_order = orders[shuffled]
            results[(bs, shuffled)] = EncodedSplit(
                q_feats=_efp_in_batches(model, q_base, q_unified, q_order, bs, "text", dev), q_pids=staged.q_pids,
                g_feats=_efp_in_batches(model, g_base, g_unified, g_order, bs, "image", dev), g_pids=staged.g_pids,
                captions=staged.captions, img_paths=staged.img_paths)
    finally:
        model.train(was_training)
    return results


class _EFPInputs(nn.Module):
    """Adapter for :func:`encode_split`: ``encode_image`` / ``encode_text`` return PHP's per-sample EFP inputs
    flattened, ``[base (D) | unified (cnum * D)]`` per row."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def _flat(self, inputs: torch.Tensor, modality: str) -> torch.Tensor:
        base, unified = self.model.efp_inputs(inputs, modality)
        return torch.cat([base.float(), unified.float().flatten(1)], dim=1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self._flat(images, "image")

    def encode_text(self, caption_ids: torch.Tensor) -> torch.Tensor:
        return self._flat(caption_ids, "text")


def _query_table(encoded: EncodedSplit, per_query: Any) -> dict:
    """The per-query columns :func:`irra_core.evaluation.bootstrap.paired_test` reads, t2i queries in annotation order."""
    return {"first_hit_rank": per_query.first_hit_rank, "AP": per_query.ap, "INP": per_query.inp,
            "pid": encoded.q_pids.numpy()}


def identities_per_batch(pids: Sequence[int], batch_size: int, order: Optional[Sequence[int]] = None) -> float:
    """Mean number of distinct identities in the batches of ``batch_size`` consecutive items.

    Args:
        pids: identity of each item in annotation order.
        order: the loader's item order (default: annotation order, i.e. identity-ordered).
    """
    seq = [pids[i] for i in order] if order is not None else list(pids)
    if not seq:
        return 0.0
    counts = [len(set(seq[i:i + batch_size])) for i in range(0, len(seq), batch_size)]
    return float(sum(counts) / len(counts))


def inflation_curve(
    model: nn.Module,
    cfg: Any,
    split: Any = "test",
    *,
    batch_sizes: Sequence[int] = (32, 64, 128, 256, 512),
    seed: int = 0,
    device: Any = None,
    max_queries: Optional[int] = None,
    progress: bool = False,
    n_resamples: int = 1000,
):
    """Identity-ordered minus shuffled retrieval as a function of the batch composition.

    For each batch size the split is encoded in annotation order (identity-ordered, as IRRA's and PHP's
    evaluation loaders do) and in a seeded shuffled order; the row records how many identities a batch
    holds on average in either order (gallery images and query captions separately) and the t2i metrics
    of both. A per-sample model has ``inflation_R1 == 0`` everywhere; a model that attends across the
    batch (PHP's release EFP, SPEC §2.11) gains most when a batch holds few identities.

    Args:
        batch_sizes: evaluation batch sizes (PHP's ``--test_batch_size`` default is 64, IRRA's 512; SPEC §2.3).
        max_queries: audit the first whole identities with at most this many captions (None = all).

    Returns:
        pandas DataFrame, one row per batch size: ``batch_size``, ``gallery_ids_per_batch``,
        ``query_ids_per_batch`` (identity-ordered), ``shuffled_gallery_ids_per_batch``,
        ``ordered_R1``, ``shuffled_R1``, ``inflation_R1`` (pp) with ``inflation_R1_low`` / ``_high`` (its paired
        95% interval over identities, :func:`irra_core.evaluation.bootstrap.paired_test` with ``n_resamples``),
        ``ordered_mAP``, ``shuffled_mAP``, ``inflation_mAP`` (pp).

    The towers run once; only EFP runs per batch size and order (:func:`encode_arrangements`).
    """
    import pandas as pd

    from irra_core.evaluation.bootstrap import paired_test

    split_dict = _audited_split(cfg, split, max_queries, None)
    dev = resolve_device(device, cfg, model)
    g_pids, q_pids = split_dict["image_pids"], split_dict["caption_pids"]
    g_shuffled = _loader_orders(cfg, split_dict, True, seed)[0].tolist()
    encodings = encode_arrangements(model, cfg, split_dict, [(bs, sh) for bs in batch_sizes for sh in (False, True)],
                                    seed=seed, device=dev, progress=progress)
    rows = []
    for bs in batch_sizes:
        row: dict = {"batch_size": int(bs), "gallery_ids_per_batch": identities_per_batch(g_pids, bs),
                     "query_ids_per_batch": identities_per_batch(q_pids, bs),
                     "shuffled_gallery_ids_per_batch": identities_per_batch(g_pids, bs, g_shuffled)}
        tables = {}
        for name, shuffled in (("ordered", False), ("shuffled", True)):
            encoded = encodings[(int(bs), shuffled)]
            metrics, per_query = metrics_from_embeddings(encoded, i2t=False, topk=0)
            row[f"{name}_R1"], row[f"{name}_mAP"] = metrics["t2i"]["R1"], metrics["t2i"]["mAP"]
            tables[name] = _query_table(encoded, per_query)
        paired = paired_test(tables["ordered"], tables["shuffled"], n_resamples=n_resamples, seed=seed)
        row["inflation_R1"] = row["ordered_R1"] - row["shuffled_R1"]
        row["inflation_R1_low"], row["inflation_R1_high"] = paired.loc["R1", "low"], paired.loc["R1", "high"]
        row["inflation_mAP"] = row["ordered_mAP"] - row["shuffled_mAP"]
        rows.append(row)
    return pd.DataFrame(rows)


def order_comparison(model: nn.Module, cfg: Any, split: Any = "test", *, batch_size: Optional[int] = None,
                     seed: int = 0, device: Any = None, n_resamples: int = 1000, progress: bool = False,
                     alone: bool = False) -> dict:
    """One model's test metrics with identity-ordered and with shuffled evaluation batches, and their paired difference.

    Both encodings come from :func:`encode_arrangements` (batch size ``batch_size``, default
    ``cfg.data.test_batch_size``; shuffled: the loaders' seeded order). The difference is per query, on the same
    captions and gallery, so the test sees only what the batching changed: ``paired`` is
    :func:`irra_core.evaluation.bootstrap.paired_test` of ordered minus shuffled (95% identity-bootstrap interval,
    sign-flip p-value over identities, ``n_resamples`` each).

    With ``alone`` every sample is also encoded on its own (batch size 1: no batch-mates, as a deployed search
    encodes one query against a gallery in any order), and ``paired_alone`` compares identity-ordered with alone:
    what the reference's evaluation protocol reports over what the model gives one query at a time (SPEC §2.11:
    the release's test numbers come from identity-ordered batches of 64). A per-sample model gives 0 in both tests.

    Returns:
        ``{"identity-ordered": metrics, "shuffled": metrics, "paired": DataFrame}``, plus ``"alone": metrics`` and
        ``"paired_alone": DataFrame`` with ``alone``; ``metrics`` as
        :func:`irra_core.evaluation.metrics_from_embeddings` (``{"t2i": {...}, "i2t": {...}}`` in percent, with
        ``"ci"`` intervals); ``paired`` indexed by metric (R1 ... mINP, t2i) with columns ``identity-ordered``,
        ``shuffled``, ``diff``, ``low``, ``high`` (percentage points) and ``p_value`` (``paired_alone``: ``alone``
        in place of ``shuffled``).
    """
    from irra_core.evaluation.bootstrap import paired_test

    bs = int(batch_size or cfg.data.test_batch_size)
    settings = {"identity-ordered": (bs, False), "shuffled": (bs, True)}
    if alone:
        settings["alone"] = (1, False)
    encodings = encode_arrangements(model, cfg, split, list(dict.fromkeys(settings.values())), seed=seed,
                                    device=device, progress=progress)
    out, tables = {}, {}
    for name, arrangement in settings.items():
        encoded = encodings[arrangement]
        metrics, per_query = metrics_from_embeddings(encoded, topk=0, bootstrap=n_resamples, bootstrap_seed=seed)
        out[name] = {k: v for k, v in metrics.items() if k in ("t2i", "i2t", "ci")}
        tables[name] = _query_table(encoded, per_query)
    out["paired"] = paired_test(tables["identity-ordered"], tables["shuffled"], n_resamples=n_resamples, seed=seed,
                                names=("identity-ordered", "shuffled"))
    if alone:
        out["paired_alone"] = paired_test(tables["identity-ordered"], tables["alone"], n_resamples=n_resamples,
                                          seed=seed, names=("identity-ordered", "alone"))
    return out


def order_verdict(name: str, ordered: float, shuffled: float, batch_size: int, *, tolerance: float = 0.005,
                  interval: Optional[tuple[float, float]] = None, p_value: Optional[float] = None,
                  metric: str = "R1") -> str:
    """One sentence on a model's t2i ``metric`` (percent) with identity-ordered vs shuffled test batches: identical
    (within ``tolerance`` pp), above or below. Notebook 40 prints it under the table, so the text always states the
    measured direction and size. With the paired ``interval`` (low, high; pp) and ``p_value`` of
    :func:`order_comparison` it also says whether the difference stands out from the noise of sampling test
    identities (an interval that excludes 0) or not."""
    gain = ordered - shuffled
    if abs(gain) < tolerance:
        verdict = "identical in both orders: its test result does not depend on batching"
    else:
        verdict = f"identity-ordered batches score {abs(gain):.2f} pp {'above' if gain > 0 else '*below*'} shuffled ones"
        if interval is None:
            verdict += ": the test result is inflated" if gain > 0 else ""
        else:
            low, high = interval
            verdict += (f" (paired 95% interval [{low:+.2f}, {high:+.2f}] pp"
                        + (f", p = {p_value:.3f}" if p_value is not None else "") + ")")
            verdict += (": the batching changes the test result" if low > 0 or high < 0
                        else ": a difference within the noise of sampling this many test identities")
    return (f"{name}: t2i {metric} {ordered:.2f} identity-ordered vs {shuffled:.2f} shuffled (batch size {batch_size}): "
            f"{verdict}")


def alone_verdict(name: str, ordered: float, alone: float, batch_size: int, *, interval: tuple[float, float],
                  p_value: float, metric: str = "R1", tolerance: float = 0.005) -> str:
    """One sentence on a model's t2i ``metric`` (percent) with identity-ordered test batches of ``batch_size`` (the
    reference's evaluation protocol, SPEC §2.11) against each sample encoded alone (batch size 1, what a deployed
    search gets), with the paired 95% ``interval`` (pp) and ``p_value`` of :func:`order_comparison` (``alone``)."""
    gain = ordered - alone
    head = (f"{name}: t2i {metric} {ordered:.2f} with identity-ordered batches of {batch_size} (the reference's "
            f"protocol) vs {alone:.2f} alone (batch size 1, one query at a time)")
    if abs(gain) < tolerance:
        return f"{head}: identical: its test number is what one query at a time gets"
    low, high = interval
    verdict = (f"the protocol reports {abs(gain):.2f} pp {'more' if gain > 0 else 'less'} (paired 95% interval "
               f"[{low:+.2f}, {high:+.2f}] pp, p = {p_value:.3f})")
    verdict += (": the reported number is not what a deployed search gets" if low > 0 or high < 0
                else ": a difference within the noise of sampling this many test identities")
    return f"{head}: {verdict}"


def order_report(comparisons: dict, batch_size: int, metrics: Sequence[str] = ("R1", "mAP", "mINP"),
                 verdict_metrics: Sequence[str] = ("R1", "mAP")):
    """Notebook 40's table and sentences from ``{model: order_comparison(...)}``.

    Returns:
        ``(table, sentences)``: a DataFrame indexed by (model, metric) with columns ``identity-ordered``,
        ``shuffled``, ``diff``, ``low``, ``high`` (percent / percentage points) and ``p_value``, one row per model
        and metric of ``metrics`` (for comparisons made with ``alone``, also ``alone`` and ``ordered_minus_alone``,
        ``alone_low``, ``alone_high``, ``alone_p_value``: identity-ordered minus batch size 1); and one
        :func:`order_verdict` sentence per model and metric of ``verdict_metrics``, then one :func:`alone_verdict`
        per model compared alone and metric.
    """
    import pandas as pd

    columns = ["identity-ordered", "shuffled", "diff", "low", "high", "p_value"]
    alone_columns = {"alone": "alone", "diff": "ordered_minus_alone", "low": "alone_low", "high": "alone_high",
                     "p_value": "alone_p_value"}
    frames = {}
    for name, c in comparisons.items():
        frame = c["paired"].loc[list(metrics), columns]
        if "paired_alone" in c:
            extra = c["paired_alone"].loc[list(metrics), list(alone_columns)].rename(columns=alone_columns)
            frame = pd.concat([frame, extra], axis=1)
        frames[name] = frame
    table = pd.concat(frames, names=["model", "metric"])
    sentences = []
    for name, comparison in comparisons.items():
        for metric in verdict_metrics:
            row = comparison["paired"].loc[metric]
            sentences.append(order_verdict(name, row["identity-ordered"], row["shuffled"], batch_size,
                                           interval=(row["low"], row["high"]), p_value=row["p_value"], metric=metric))
    for name, comparison in comparisons.items():
        if "paired_alone" not in comparison:
            continue
        for metric in verdict_metrics:
            row = comparison["paired_alone"].loc[metric]
            sentences.append(alone_verdict(name, row["identity-ordered"], row["alone"], batch_size,
                                           interval=(row["low"], row["high"]), p_value=row["p_value"], metric=metric))
    return table, sentences


def gap_verdict(orders: dict, batch_size: int, leaky: str = "php-batch-efp", clean: str = "php",
                tolerance: float = 0.005) -> str:
    """One sentence splitting the t2i R1 gap (pp) between the batch-axis model ``leaky`` and the per-sample ``clean``
    at ``batch_size`` into the part the test order makes (``leaky`` ordered minus shuffled) and the part that stays
    with shuffled batches (a difference between the trained models, not the order).

    Args:
        orders: ``{(model, "identity-ordered" | "shuffled" | "alone"): metrics}`` as notebook 40 builds it from
            :func:`order_comparison` (``metrics["t2i"]["R1"]`` in percent). With both models' ``"alone"`` entries the
            sentence ends with the gap one query at a time (batch size 1), the only one a deployed search sees.
    """
    r1 = {key: float(m["t2i"]["R1"]) for key, m in orders.items()}
    gap = r1[(leaky, "identity-ordered")] - r1[(clean, "identity-ordered")]
    order_part = r1[(leaky, "identity-ordered")] - r1[(leaky, "shuffled")]
    model_part = r1[(leaky, "shuffled")] - r1[(clean, "shuffled")]
    text = (f"batch size {batch_size}: {leaky} scores {gap:+.2f} pp t2i R1 against {clean} with identity-ordered "
            f"batches; the order accounts for {order_part:+.2f} pp of it ({leaky} ordered minus shuffled), and with "
            f"shuffled batches {leaky} still scores {model_part:+.2f} pp")
    if abs(model_part) >= tolerance:
        text += (": that part is a difference between the trained models (training with batch-mates), which no "
                 "choice of test order removes")
    if (leaky, "alone") in r1 and (clean, "alone") in r1:
        text += (f"; one query at a time (batch size 1, no batch-mates) {leaky} scores "
                 f"{r1[(leaky, 'alone')] - r1[(clean, 'alone')]:+.2f} pp against {clean}")
    return text


def curve_verdict(name: str, curve: Any, per_sample_inflation: Optional[float] = None) -> str:
    """One sentence on :func:`inflation_curve`'s table: the R1 inflation (identity-ordered minus shuffled, pp) with its
    paired 95% interval at the fewest and at the most identities per identity-ordered gallery batch, and, when given,
    the per-sample model's inflation (pp) at the comparison's batch size.

    Raises:
        ValueError: ``curve`` has no rows.
    """
    if len(curve) == 0:
        raise ValueError("the inflation curve has no batch sizes")
    rows = curve.reset_index(drop=True)
    ids = rows["gallery_ids_per_batch"]

    def point(row) -> str:
        return (f"{row.inflation_R1:+.2f} pp [{row.inflation_R1_low:+.2f}, {row.inflation_R1_high:+.2f}] at "
                f"{row.gallery_ids_per_batch:.1f} identities per batch (batch size {int(row.batch_size)})")

    text = f"{name}: inflation {point(rows.loc[ids.idxmin()])}, {point(rows.loc[ids.idxmax()])}"
    if per_sample_inflation is not None:
        text += f"; the per-sample php differs by {per_sample_inflation:.2f} pp (above)"
    return text


def leak_audit_record(audits: dict, comparisons: dict, curves: dict, batch_size: int) -> dict:
    """Notebook 40's ``leak_audit.json``: per model, the audit's verdict (:class:`LeakAuditReport`), the metrics of
    each test arrangement of :func:`order_comparison` (percent) with the paired differences (pp) and, for the
    models that have one, the :func:`inflation_curve` rows.

    Args:
        audits: ``{model: LeakAuditReport}``; every model needs an entry in ``comparisons``.
        comparisons: ``{model: order_comparison(...)}`` (with or without ``alone``).
        curves: ``{model: inflation_curve(...) DataFrame}`` for some of the models.
        batch_size: the comparison's test batch size.

    Raises:
        KeyError: a model of ``audits`` has no comparison.
    """
    record = {}
    for name, audit in audits.items():
        comparison = comparisons[name]
        entry = {"flagged": audit.flagged, "reasons": audit.reasons, "max_embedding_diff": audit.max_embedding_diff,
                 "metric_spread": audit.metric_spread, "runs": audit.runs,
                 "identity_ordered": comparison["identity-ordered"], "shuffled": comparison["shuffled"],
                 "ordered_minus_shuffled": comparison["paired"].reset_index().to_dict("records")}
        if "alone" in comparison:
            entry["alone"] = comparison["alone"]
            entry["ordered_minus_alone"] = comparison["paired_alone"].reset_index().to_dict("records")
        entry["test_batch_size"] = batch_size
        entry["inflation_curve"] = curves[name].to_dict("records") if name in curves else None
        record[name] = entry
    return record


def audit_summary(name: str, audit: LeakAuditReport, *, tolerance: float = 0.005) -> str:
    """One sentence from a :class:`LeakAuditReport`: t2i R1 (percent) alone (batch size 1), identity-ordered and
    shuffled at the smallest batch size above 1, and whether the ordered bar is level with, above or below."""
    frame = audit.to_dataframe()
    size = frame.loc[frame["batch_size"] > 1, "batch_size"].min()
    ordered = frame[(frame["batch_size"] == size) & ~frame["shuffled"]].iloc[0]["t2i_R1"]
    shuffled = frame[(frame["batch_size"] == size) & frame["shuffled"]].iloc[0]["t2i_R1"]
    solo = frame[frame["batch_size"] == 1].iloc[0]["t2i_R1"]
    gap = ordered - shuffled
    where = "level with" if abs(gap) < tolerance else f"{abs(gap):.2f} pp {'above' if gap > 0 else 'below'}"
    return (f"{name}: t2i R1 {solo:.2f} alone, {ordered:.2f} identity-ordered, {shuffled:.2f} shuffled (batch size "
            f"{size}): the identity-ordered bar is {where} the shuffled one")
