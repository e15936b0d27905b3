"""Training-free re-scoring of the text-to-image similarity matrix, each labelled by what it looks at.

A re-scoring method replaces the cosine scores ``S`` (Q queries x G gallery images) by new scores whose
*row order* is the new ranking. Honest reporting needs to know what each method uses besides a query's own
row: the gallery is always given in retrieval, but **the other test queries are not**; a method that reads
them is *transductive* (its ranking of a query changes when other test queries change, and it needs the
whole test set at once).

| method (switch)      | transductive | uses                                    | source |
|----------------------|--------------|-----------------------------------------|--------|
| ``none``             | no           | the query's own row                     | |
| ``qb_norm``          | no           | a bank of *training* captions, gallery  | Bogolin et al., CVPR 2022 (QB-Norm, dynamic inverted softmax) |
| ``inverted_softmax`` | yes          | every test query, gallery               | Smith et al., ICLR 2017 (inverted softmax) |
| ``dual_softmax``     | yes          | every test query, gallery               | Cheng et al., 2021 (CAMoE, dual softmax) |
| ``k_reciprocal``     | yes          | every test query and gallery item       | Zhong et al., CVPR 2017 (k-reciprocal encoding) |

:func:`rescore` is the switch; each method is also a function of its own. Scores are returned where only
their order within a row matters (QB-Norm and the inverted softmax in log space, k-reciprocal as a negative
distance). :func:`rescoring_audit` measures the "transductive" label.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch


@dataclass(frozen=True)
class RescoringMethod:
    """What a re-scoring method is: its switch ``name``, whether it is ``transductive`` (reads other test
    queries), what it ``uses`` and its ``source`` (paper)."""

    name: str
    transductive: bool
    uses: str
    source: str


METHODS: dict[str, RescoringMethod] = {m.name: m for m in (
    RescoringMethod("none", False, "the query's own similarity row", "cosine similarity"),
    RescoringMethod("qb_norm", False, "a bank of training captions and the gallery",
                    "Bogolin et al., Cross Modal Retrieval with Querybank Normalisation, CVPR 2022"),
    RescoringMethod("inverted_softmax", True, "all test queries and the gallery",
                    "Smith et al., Offline bilingual word vectors ... and the inverted softmax, ICLR 2017"),
    RescoringMethod("dual_softmax", True, "all test queries and the gallery",
                    "Cheng et al., Improving Video-Text Retrieval by ... Dual Softmax Loss (CAMoE), 2021"),
    RescoringMethod("k_reciprocal", True, "all test queries and gallery items (their mutual neighbours)",
                    "Zhong et al., Re-ranking Person Re-identification with k-reciprocal Encoding, CVPR 2017"),
)}


def _check_matrix(similarity: torch.Tensor, name: str = "similarity") -> torch.Tensor:
    if not isinstance(similarity, torch.Tensor) or similarity.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor (queries x gallery), got {getattr(similarity, 'shape', type(similarity))}")
    return similarity.double()


def qb_norm(similarity: torch.Tensor, bank_similarity: torch.Tensor, *, beta: float = 20.0, k: int = 1) -> torch.Tensor:
    """Querybank normalisation with the dynamic inverted softmax (Bogolin et al., CVPR 2022, Eq. 3-5).

    Each gallery item ``g`` gets the normaliser ``Z_g = sum_b exp(beta * B[b, g])`` over a bank of queries
    that are *not* test queries (here: training captions). The *activation set* holds the gallery items that
    are among the top-``k`` of some bank query. A test query whose top-1 item is in the activation set is
    re-scored ``exp(beta * s) / Z_g`` (returned as its log, ``beta * s - log Z_g``: same order); any other
    query keeps its row. Not transductive.

    Args:
        similarity: (Q, G) test queries x gallery.
        bank_similarity: (B, G) bank queries x the same gallery.
        beta: inverse temperature (the paper's default 20).
        k: top-k of the bank queries forming the activation set (paper: 1).

    Returns:
        (Q, G) float64 scores.
    """
    sim = _check_matrix(similarity)
    bank = _check_matrix(bank_similarity, "bank_similarity")
    if bank.shape[1] != sim.shape[1] or len(bank) == 0:
        raise ValueError(f"bank_similarity must be (B>0, G={sim.shape[1]}), got {tuple(bank.shape)}")
    log_norm = torch.logsumexp(beta * bank, dim=0)  # (G,)
    active = torch.zeros(sim.shape[1], dtype=torch.bool)
    active[torch.topk(bank, min(k, bank.shape[1]), dim=1).indices.reshape(-1)] = True
    top1 = _stable_argmax(sim)
    normalised = beta * sim - log_norm
    return torch.where(active[top1].unsqueeze(1), normalised, sim)


def _stable_argmax(sim: torch.Tensor) -> torch.Tensor:
    """Index of each row's maximum, the lowest index among ties (the workbook's tie rule)."""
    best = sim.max(dim=1, keepdim=True).values
    idx = torch.arange(sim.shape[1]).expand_as(sim)
    return torch.where(sim == best, idx, sim.shape[1]).min(dim=1).values


def inverted_softmax(similarity: torch.Tensor, *, beta: float = 20.0) -> torch.Tensor:
    """Inverted softmax over the test queries (Smith et al., ICLR 2017, §3): transductive.

    ``s'(q, g) = exp(beta s(q, g)) / sum_{q'} exp(beta s(q', g))`` with ``q'`` every *test* query, returned as
    its log ``beta s(q, g) - logsumexp_{q'} beta s(q', g)`` (same order). It is QB-Norm's inverted softmax with
    the test queries as the bank. (Q, G) -> (Q, G) float64.
    """
    sim = _check_matrix(similarity)
    return beta * sim - torch.logsumexp(beta * sim, dim=0, keepdim=True)


def dual_softmax(similarity: torch.Tensor, *, temperature: float = 0.01) -> torch.Tensor:
    """Dual softmax (CAMoE, Cheng et al. 2021, inference): transductive.

    ``s'(q, g) = s(q, g) * softmax_{q'}(s(q', g) / temperature)[q]``: each score is weighted by how strongly
    the gallery item prefers this query among all test queries (temperature 0.01 = the release's x100).
    (Q, G) -> (Q, G) float64.
    """
    sim = _check_matrix(similarity)
    return sim * torch.softmax(sim / temperature, dim=0)


# --------------------------------------------------------------------------------------------------
# k-reciprocal re-ranking
# --------------------------------------------------------------------------------------------------
def _first_columns(dist: torch.Tensor, count: int, chunk: int = 1024) -> torch.Tensor:
    """The ``count`` nearest columns of each row of ``dist`` in stable ascending order (ties: lower index)."""
    out = []
    for start in range(0, len(dist), chunk):
        out.append(torch.sort(dist[start:start + chunk], dim=1, stable=True).indices[:, :count])
    return torch.cat(out)


def k_reciprocal_distance(dist: torch.Tensor, num_query: int, *, k1: int = 20, k2: int = 6,
                          lambda_value: float = 0.3, chunk: int = 256) -> torch.Tensor:
    """k-reciprocal re-ranking of an (N, N) distance matrix over queries then gallery (Zhong et al., CVPR 2017).

    Follows the paper (§3.2-3.5) and its reference procedure: distances are normalised by each column's
    maximum; ``R(i, k1)`` is the set of mutual ``k1``-nearest neighbours of item ``i`` (``j`` among ``i``'s
    ``k1 + 1`` nearest and ``i`` among ``j``'s); it is expanded by ``R(c, round(k1/2))`` for every candidate
    ``c`` in ``R(i, k1)`` sharing more than 2/3 of its items with ``R(i, k1)`` (Eq. 12); ``V_i`` puts weight
    ``exp(-d(i, j))`` (normalised to sum 1) on the expanded set (Eq. 13); local query expansion averages
    ``V`` over the ``k2`` nearest items (Eq. 14); the Jaccard distance is ``1 - sum min / sum max`` (Eq. 11,
    ``sum max = 2 - sum min``) and the final distance ``(1 - lambda) d_J + lambda d`` (Eq. 15).

    Args:
        dist: (N, N) non-negative distances, rows/columns = ``num_query`` queries then the gallery.
        num_query: Q.
        k1, k2, lambda_value: the paper's parameters (defaults 20, 6, 0.3).

    Returns:
        (Q, G) float64 final distances (lower = better), G = N - Q.

    Cost: a few (N, N) float64 / bool matrices (about 3 GB at CUHK-PEDES size, N = 9,230; 30 MB at the
    workbook's default test split); the expansion works on each item's ``k1 + 1`` nearest only and the Jaccard
    step on the pairs that share a neighbour (an inverted index), so no N x N x N product is formed.
    """
    dist = _check_matrix(dist, "dist")
    n = dist.shape[0]
    if dist.shape[1] != n or not 0 < num_query < n:
        raise ValueError(f"dist must be square (N, N) with 0 < num_query < N, got {tuple(dist.shape)}, {num_query}")
    if (dist < 0).any():
        raise ValueError("dist must be non-negative")
    d = (dist / dist.max(dim=0, keepdim=True).values.clamp(min=1e-12)).T.contiguous()
    nearest = _first_columns(d, max(k1 + 1, k2))
    expanded = _expanded_neighbours(nearest, k1, chunk)
    weights = torch.where(expanded, torch.exp(-d), torch.zeros((), dtype=d.dtype))
    v = weights / weights.sum(dim=1, keepdim=True)  # Eq. 13
    if k2 != 1:  # local query expansion, Eq. 14
        v = torch.cat([v[nearest[s:s + chunk, :k2]].mean(dim=1) for s in range(0, n, chunk)])
    overlap = _gallery_overlap(v, num_query)
    jaccard = 1.0 - overlap / (2.0 - overlap)  # Eq. 11
    return jaccard * (1.0 - lambda_value) + d[:num_query, num_query:] * lambda_value  # Eq. 15


def _expanded_neighbours(nearest: torch.Tensor, k1: int, chunk: int) -> torch.Tensor:
    """(N, N) bool: ``R(i, k1)`` expanded by every ``R(c, round(k1/2))`` sharing more than 2/3 of its items with it
    (Eq. 12), from each item's nearest columns ``nearest`` (N, >= k1 + 1)."""
    n = nearest.shape[0]

    def reciprocal(k: int) -> torch.Tensor:
        adjacent = torch.zeros(n, n, dtype=torch.bool)
        adjacent.scatter_(1, nearest[:, :k], True)
        return adjacent & adjacent.T

    full, half = reciprocal(k1 + 1), reciprocal(int(round(k1 / 2.0)) + 1)
    half_size = half.sum(dim=1).double()
    # R(i, k1) lies within i's k1 + 1 nearest, so work on those candidate slots only (no N x N x N products)
    cand = nearest[:, :k1 + 1]
    expanded = full.clone()
    for start in range(0, n, chunk):
        c = cand[start:start + chunk]  # (b, K)
        in_r = full[start:start + chunk].gather(1, c)  # (b, K): the candidate is in R(i, k1)
        shared = (half[c.unsqueeze(2), c.unsqueeze(1)] & in_r.unsqueeze(1)).sum(dim=2)  # |R(c, k1/2) & R(i, k1)|
        accept = in_r & (shared.double() > (2.0 / 3.0) * half_size[c])
        expanded[start:start + chunk] |= (half[c] & accept.unsqueeze(2)).any(dim=1)
    return expanded


def _gallery_overlap(v: torch.Tensor, num_query: int) -> torch.Tensor:
    """(Q, G) float64 ``sum_k min(V_q[k], V_g[k])`` of the rows of ``v`` (N, N), over the pairs sharing an item
    ``k``, found through an inverted index of the gallery's non-zero entries (as the reference procedure does)."""
    n = v.shape[0]
    g_cols, g_rows = (v[num_query:].T > 0).nonzero(as_tuple=True)  # sorted by item k, then gallery j
    g_values = v[num_query:][g_rows, g_cols]
    col_count = torch.bincount(g_cols, minlength=n)
    col_start = torch.cumsum(col_count, 0) - col_count
    overlap = torch.zeros(num_query * (n - num_query), dtype=torch.float64)
    q_rows, q_cols = (v[:num_query] > 0).nonzero(as_tuple=True)
    q_values = v[:num_query][q_rows, q_cols]
    step = max(1, 4_000_000 // max(1, int(col_count.max()) if len(col_count) else 1))
    for s0 in range(0, len(q_rows), step):
        rows, cols, values = q_rows[s0:s0 + step], q_cols[s0:s0 + step], q_values[s0:s0 + step]
        counts = col_count[cols]
        total = int(counts.sum())
        if total == 0:
            continue
        first = torch.repeat_interleave(col_start[cols] - (torch.cumsum(counts, 0) - counts), counts)
        entry = first + torch.arange(total)  # index into the gallery's non-zero list
        pair = torch.repeat_interleave(rows, counts) * (n - num_query) + g_rows[entry]
        overlap.index_add_(0, pair, torch.minimum(torch.repeat_interleave(values, counts), g_values[entry]))
    return overlap.view(num_query, n - num_query)


def k_reciprocal(similarity: torch.Tensor, q_feats: torch.Tensor, g_feats: torch.Tensor, *, k1: int = 20, k2: int = 6,
                 lambda_value: float = 0.3, align_modalities: bool = True) -> torch.Tensor:
    """k-reciprocal re-ranking for text-to-image retrieval: transductive (other test queries are neighbours).

    Builds the (Q + G) x (Q + G) squared distances ``2 - 2 cos`` of unit features: caption-caption,
    caption-image (``similarity``) and image-image. Same-modality cosines run far higher than cross-modal ones
    (the modality gap), which would make every neighbour set single-modal; with ``align_modalities`` the two
    same-modality blocks are standardised to the cross-modal block's mean and standard deviation first (an
    adaptation of Zhong et al.'s single-modality procedure, not in the paper). Then
    :func:`k_reciprocal_distance`.

    Args:
        similarity: (Q, G) cosine similarities of ``q_feats`` and ``g_feats``.
        q_feats: (Q, D) and g_feats: (G, D) L2-normalised features.

    Returns:
        (Q, G) float64 scores (the negative final distance).
    """
    sim = _check_matrix(similarity)
    q = q_feats.double()
    g = g_feats.double()
    if q.shape[0] != sim.shape[0] or g.shape[0] != sim.shape[1]:
        raise ValueError(f"features {tuple(q.shape)} / {tuple(g.shape)} do not match similarity {tuple(sim.shape)}")
    qq, gg = q @ q.T, g @ g.T
    if align_modalities:
        mean, std = sim.mean(), sim.std().clamp(min=1e-12)

        def align(block: torch.Tensor) -> torch.Tensor:
            off = ~torch.eye(len(block), dtype=torch.bool)
            values = block[off]
            if len(values) < 2:
                return block
            out = (block - values.mean()) / values.std().clamp(min=1e-12) * std + mean
            return out.fill_diagonal_(float(out.max()))  # an item stays its own nearest neighbour

        qq, gg = align(qq), align(gg)
    full = torch.cat([torch.cat([qq, sim], dim=1), torch.cat([sim.T, gg], dim=1)])
    dist = (2.0 - 2.0 * full).clamp(min=0.0)
    return -k_reciprocal_distance(dist, sim.shape[0], k1=k1, k2=k2, lambda_value=lambda_value)


# --------------------------------------------------------------------------------------------------
# the switch
# --------------------------------------------------------------------------------------------------
def rescore(method: str, similarity: torch.Tensor, *, q_feats: Optional[torch.Tensor] = None,
            g_feats: Optional[torch.Tensor] = None, bank_feats: Optional[torch.Tensor] = None,
            params: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Re-score ``similarity`` (Q, G) with ``method`` (a key of :data:`METHODS`).

    ``q_feats`` (Q, D) / ``g_feats`` (G, D) unit features (needed by ``k_reciprocal``); ``bank_feats`` (B, D)
    unit features of training captions (needed by ``qb_norm``); ``params`` the method's keyword arguments.

    Raises:
        ValueError: unknown method or a missing input.
    """
    params = dict(params or {})
    if method not in METHODS:
        raise ValueError(f"unknown re-scoring method {method!r}; choose one of {sorted(METHODS)}")
    if method == "none":
        return similarity.double()
    if method == "qb_norm":
        if bank_feats is None or g_feats is None:
            raise ValueError("qb_norm needs bank_feats (training captions) and g_feats (the gallery)")
        return qb_norm(similarity, bank_feats.double() @ g_feats.double().T, **params)
    if method == "inverted_softmax":
        return inverted_softmax(similarity, **params)
    if method == "dual_softmax":
        return dual_softmax(similarity, **params)
    if q_feats is None or g_feats is None:
        raise ValueError("k_reciprocal needs q_feats and g_feats")
    return k_reciprocal(similarity, q_feats, g_feats, **params)


def rescoring_table(q_feats: torch.Tensor, g_feats: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor, *,
                    bank_feats: Optional[torch.Tensor] = None, methods: Sequence[str] = tuple(METHODS),
                    params: Mapping[str, Mapping[str, Any]] | None = None, n_resamples: int = 1000, seed: int = 0):
    """Every method's t2i metrics with 95% identity-bootstrap intervals and its paired difference to ``none``.

    Args:
        q_feats, g_feats: (Q, D), (G, D) features (normalised here); q_pids (Q,), g_pids (G,).
        bank_feats: (B, D) training-caption features, needed when ``methods`` holds ``qb_norm``.
        methods: the rows; the differences are always to ``none`` (plain cosine), computed even when not listed.
        params: ``{method: keyword arguments}``.

    Returns:
        DataFrame indexed by method: ``transductive``, ``uses``, ``R1`` ... ``mINP`` (percent), ``<metric>_ci``
        (``[low, high]``), ``dR1``/``dmAP`` (difference to ``none``, pp), ``dR1_ci``/``dmAP_ci`` and
        ``p_R1``/``p_mAP`` (sign-flip p-values over identities).
    """
    import pandas as pd

    from irra_core.evaluation.bootstrap import _paired_frame, bootstrap_metrics, query_values
    from irra_core.evaluation.metrics import METRIC_KEYS, rank_per_query

    q = torch.nn.functional.normalize(q_feats.float(), dim=1)
    g = torch.nn.functional.normalize(g_feats.float(), dim=1)
    bank = torch.nn.functional.normalize(bank_feats.float(), dim=1) if bank_feats is not None else None
    similarity = q @ g.T
    base, pids = query_values(rank_per_query(similarity, q_pids, g_pids), q_pids)
    rows = {}
    for method in methods:
        if method == "none":
            values = base
        else:
            scores = rescore(method, similarity, q_feats=q, g_feats=g, bank_feats=bank,
                             params=(params or {}).get(method))
            values = query_values(rank_per_query(scores, q_pids, g_pids), q_pids)[0]
        boot = bootstrap_metrics(values, pids, n_resamples=n_resamples, seed=seed)
        info = METHODS[method]
        row: dict[str, Any] = {"transductive": info.transductive, "uses": info.uses}
        row.update({k: boot.estimate[k] for k in METRIC_KEYS})
        row.update({f"{k}_ci": [round(boot.low[k], 3), round(boot.high[k], 3)] for k in METRIC_KEYS})
        paired = _paired_frame(values, base, pids, n_resamples=n_resamples, seed=seed, level=0.95,
                               names=("method", "none"))
        for k in ("R1", "mAP"):
            row[f"d{k}"] = float(paired.loc[k, "diff"])
            row[f"d{k}_ci"] = [round(float(paired.loc[k, "low"]), 3), round(float(paired.loc[k, "high"]), 3)]
            row[f"p_{k}"] = float(paired.loc[k, "p_value"])
        rows[method] = row
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "method"
    frame.attrs.update(n_resamples=n_resamples, seed=seed, num_queries=len(q), num_gallery=len(g),
                       bank_size=0 if bank is None else len(bank))
    return frame


def training_bank(model: Any, cfg: Any, *, dataset: Any = None, size: int = 2000, seed: int = 0,
                  device: Any = None) -> torch.Tensor:
    """QB-Norm's query bank: ``size`` training captions (seeded draw without replacement; all when fewer),
    encoded by ``model``: (B, D) float32, not normalised. Only the training split is read."""
    import numpy as np

    from irra_core.evaluation.encode import encode_captions

    if dataset is None:
        from irra_core.data import prepare_dataset

        dataset = prepare_dataset(cfg)
    captions = [caption for *_, caption in dataset.train]
    if not captions:
        raise ValueError(f"{getattr(dataset, 'name', 'the dataset')} has no training captions for QB-Norm's bank")
    pick = np.random.default_rng([seed, 9021]).permutation(len(captions))[:size]
    return encode_captions(model, cfg, [captions[i] for i in sorted(pick)], device=device)


def rescoring_report(model: Any, cfg: Any, *, dataset: Any = None, device: Any = None, cache_dir: Any = None,
                     bank_size: int = 500, methods: Sequence[str] = tuple(METHODS),
                     params: Mapping[str, Mapping[str, Any]] | None = None, n_resamples: int = 1000, seed: int = 0):
    """Re-scoring of a trained model's test split: ``(table, audit)``.

    The test embeddings come from ``cache_dir`` when :func:`irra_core.evaluation.evaluate` cached them; the
    bank is :func:`training_bank`. ``table`` is :func:`rescoring_table`, ``audit`` is
    :func:`rescoring_audit` on the same features.
    """
    from irra_core.evaluation.evaluate import load_or_encode

    encoded = load_or_encode(model, cfg, "test", device=device, cache_dir=cache_dir)
    bank = training_bank(model, cfg, dataset=dataset, size=bank_size, seed=seed, device=device) \
        if "qb_norm" in methods else None
    table = rescoring_table(encoded.q_feats, encoded.g_feats, encoded.q_pids, encoded.g_pids, bank_feats=bank,
                            methods=methods, params=params, n_resamples=n_resamples, seed=seed)
    audit = rescoring_audit(encoded.q_feats, encoded.g_feats, bank_feats=bank, methods=methods, params=params,
                            num_probe=min(20, len(encoded.q_pids) // 4), seed=seed)
    return table, audit


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
    rows = {method: _audit_method(method, q, g, bank, probe, others, (params or {}).get(method))
            for method in methods}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "method"
    return frame


def _audit_method(method: str, q: torch.Tensor, g: torch.Tensor, bank: Optional[torch.Tensor], probe: torch.Tensor,
                  others: torch.Tensor, params: Optional[dict]) -> dict:
    """One row of :func:`rescoring_audit`: re-score the ``probe`` queries with all ``others``, then with each
    half of them, and compare the probes' stable gallery orders and scores."""
    num_probe = len(probe)

    def probe_scores(keep: torch.Tensor) -> torch.Tensor:
        rows_kept = torch.cat([probe, keep])
        scores = rescore(method, q[rows_kept] @ g.T, q_feats=q[rows_kept], g_feats=g, bank_feats=bank, params=params)
        return scores[:num_probe]

    full = probe_scores(others)
    full_order = torch.sort(full, dim=1, descending=True, stable=True).indices
    changed = torch.zeros(num_probe, dtype=torch.bool)
    score_change = 0.0
    for half in (others[: len(others) // 2], others[len(others) // 2:]):
        other = probe_scores(half)
        changed |= (torch.sort(other, dim=1, descending=True, stable=True).indices != full_order).any(dim=1)
        score_change = max(score_change, float((other - full).abs().max()))
    label = METHODS[method].transductive
    return {"transductive": label, "depends_on_other_queries": bool(changed.any()),
            "probes_reranked": 100.0 * float(changed.double().mean()), "max_score_change": score_change,
            "label_matches": bool(changed.any()) == label}
