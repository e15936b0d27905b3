"""Exact retrieval metrics (CMC / R@k, mAP, mINP) with IRRA's definitions, in bounded memory.

IRRA (``utils/metrics.py:rank``) argsorts the whole Q x G similarity matrix and walks it with Python
loops; at ICFG-PEDES size (19,848^2) that is a 3.2 GB index tensor plus several GB of temporaries.
Here every metric is computed from the *rank of each positive* alone:

* For query ``q`` with positive gallery items ``P_q``, the 0-based rank of positive ``j`` is
  ``#{k : s_k > s_j} + #{k < j : s_k == s_j}`` (ties: the lower gallery index ranks first, exactly what
  a *stable* descending sort gives; IRRA's unstable argsort leaves it implementation-defined).
* With the positives' ranks ``r_1 < ... < r_n`` (1-based): ``AP = mean_i i / r_i``,
  ``INP = n / r_n``, and the query contributes to ``CMC[k]`` iff ``r_1 <= k + 1`` — the same numbers
  IRRA's cumsum over the argsorted match matrix produces.
* Only items scoring at least a query's lowest positive can outrank a positive. Per chunk of
  queries these are selected (one comparison pass; few per row for a trained model), and each gets
  its bucket = number of its row's positives scoring below it, by one binary search into all
  rows' sorted positives at once (exact integer keys: row, then the float's order). A per-row
  histogram of buckets gives every positive's "how many score strictly higher". Rows where a
  positive's score is shared by another item (rare with float features) get the exact
  index-order tie count by direct comparison.

Queries are processed in chunks, and the similarity rows can be produced on the fly from features,
so neither the full Q x G matrix nor any Q x G argsort needs to exist.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from irra_core.runtime import torch_threads

METRIC_KEYS = ("R1", "R5", "R10", "mAP", "mINP")

# Bytes of temporaries per similarity element of a chunk in the worst case (every item selected:
# mask, value, row, key, search position, bucket); sets the default chunk size from a budget.
_BYTES_PER_ELEMENT = 48
DEFAULT_CHUNK_BUDGET_BYTES = 192 * 2**20


@dataclass
class PerQueryRanks:
    """Per-query results of the exact ranking (all tensors on the CPU).

    ``first_hit_rank`` (Q,) int64, 1-based rank of the first correct gallery item;
    ``ap`` (Q,) float64 average precision in [0, 1]; ``inp`` (Q,) float64 inverse negative penalty;
    ``num_positives`` (Q,) int64; ``topk_indices`` (Q, k) int64 / ``topk_scores`` (Q, k) float32 the
    best gallery items in the stable order (only when requested, else ``None``).
    """

    first_hit_rank: torch.Tensor
    ap: torch.Tensor
    inp: torch.Tensor
    num_positives: torch.Tensor
    topk_indices: Optional[torch.Tensor] = None
    topk_scores: Optional[torch.Tensor] = None


def default_chunk_size(num_gallery: int, budget_bytes: int = DEFAULT_CHUNK_BUDGET_BYTES) -> int:
    """Queries per chunk so that a chunk's temporaries stay within ``budget_bytes``."""
    return max(1, min(4096, budget_bytes // max(1, _BYTES_PER_ELEMENT * num_gallery)))


def _check_pids(pids: torch.Tensor, name: str) -> torch.Tensor:
    pids = torch.as_tensor(pids)
    if pids.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one pid per item), got shape {tuple(pids.shape)}")
    if pids.dtype.is_floating_point:
        raise ValueError(f"{name} must hold integer person ids, got dtype {pids.dtype}")
    return pids.long()


def _positive_table(q_pids: torch.Tensor, g_pids: torch.Tensor) -> torch.Tensor:
    """(Q, n_max) gallery indices of each query's positives, ascending, padded with -1.

    Raises a ValueError when a query has no positive (IRRA fails there with an IndexError).
    """
    uniq, g_inv = torch.unique(g_pids, return_inverse=True)
    counts = torch.bincount(g_inv, minlength=len(uniq))
    n_max = int(counts.max()) if len(uniq) else 0
    order = torch.argsort(g_inv, stable=True)  # gallery indices grouped by pid, ascending within a pid
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(g_pids)) - starts[g_inv[order]]
    table = torch.full((len(uniq), max(n_max, 1)), -1, dtype=torch.long)
    table[g_inv[order], slot] = order
    pos = torch.searchsorted(uniq, q_pids).clamp(max=max(len(uniq) - 1, 0))
    found = uniq[pos] == q_pids if len(uniq) else torch.zeros_like(q_pids, dtype=torch.bool)
    if not bool(found.all()):
        missing = (~found).nonzero().flatten()
        raise ValueError(
            f"{len(missing)} of {len(q_pids)} queries have no correct gallery item (first query index "
            f"{int(missing[0])}, pid {int(q_pids[missing[0]])}); every query needs at least one gallery "
            "item with its pid - check that queries and gallery come from the same split"
        )
    return table[pos]


def _stable_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of ``scores`` (C, G) in the stable descending order (ties: lower index first)."""
    num_gallery = scores.shape[1]
    k = min(k, num_gallery)
    cand = min(num_gallery, 2 * k)
    values, indices = torch.topk(scores, cand, dim=1)
    # Re-sort candidates by (score desc, index asc); valid when the k-th score's ties are all inside.
    by_index = torch.argsort(indices, dim=1)
    values, indices = values.gather(1, by_index), indices.gather(1, by_index)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
    top_v, top_i = values.gather(1, order), indices.gather(1, order)
    if cand < num_gallery:
        kth = top_v[:, -1]
        unsafe = (values.min(dim=1).values >= kth).nonzero().flatten()
        for row in unsafe.tolist():  # ties reach past the candidates: exact stable sort of that row
            full = torch.sort(scores[row], descending=True, stable=True)
            top_v[row], top_i[row] = full.values[:k], full.indices[:k]
    return top_v, top_i


def _order_keys(values: torch.Tensor) -> torch.Tensor:
    """int64 keys in [0, 2^32) ordered exactly like the float32 ``values`` (finite; -0.0 == +0.0).

    Under flush-to-zero (:func:`irra_core.runtime.flush_denormals`) subnormal values key as 0.0, as every float
    comparison of the process then reads them."""
    bits = (values.float() + 0.0).view(torch.int32).long()  # + 0.0 turns -0.0 into +0.0
    # negative floats order reversed by their bit pattern: flip the 31 magnitude bits
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + 2**31


def _rank_chunk(scores: torch.Tensor, pos_idx: torch.Tensor) -> torch.Tensor:
    """0-based stable ranks of each query's positives, sorted ascending, padded with G.

    ``scores`` (C, G) float32; ``pos_idx`` (C, n) gallery indices of positives padded with -1.
    Returns (C, n) int64.
    """
    c, g = scores.shape
    n = pos_idx.shape[1]
    device = scores.device
    valid = pos_idx >= 0
    pos_scores = scores.gather(1, pos_idx.clamp(min=0))
    pos_scores = pos_scores.masked_fill(~valid, float("inf"))  # padding sorts last
    pos_sorted, perm = torch.sort(pos_scores, dim=1)  # ascending
    sorted_idx = pos_idx.gather(1, perm)
    sorted_valid = valid.gather(1, perm)
    num_valid = sorted_valid.sum(dim=1)

    # Only items scoring >= the row's lowest positive can outrank a positive: select them (few for
    # a trained model; at worst the whole chunk), as a flat list with their row.
    flat = (scores >= pos_sorted[:, :1]).view(-1).nonzero().squeeze(1)
    rows = torch.div(flat, g, rounding_mode="floor")
    values = scores.view(-1).index_select(0, flat)  # index_select: far faster than [] here

    # Bucket of each selected item = #positives of its row scoring below it, by one binary search
    # into all rows' positives at once (keys = row, then the score's exact order).
    elem_keys = (rows << 32) + _order_keys(values)
    pos_rows = torch.arange(c, device=device).unsqueeze(1).expand(c, n)[sorted_valid]
    pos_keys = (pos_rows << 32) + _order_keys(pos_sorted[sorted_valid])  # ascending: row-major, sorted rows
    row_start = torch.cumsum(num_valid, 0) - num_valid
    where = torch.searchsorted(pos_keys, elem_keys)
    bucket = where - row_start.index_select(0, rows)
    hist = torch.zeros(c * (n + 1), dtype=torch.int64, device=device)
    hist.scatter_add_(0, rows * (n + 1) + bucket, torch.ones_like(bucket))
    # #{k : s_k > p_m} = #{k : bucket_k > m}: a suffix sum over buckets m+1..n
    greater = hist.view(c, n + 1).flip(1).cumsum(1).flip(1)[:, 1:].clone()

    # Ties. An item equal to a positive's score sits right at `where`; every positive matches
    # itself, so more matches than positives (or two positives with one score) means the
    # index-order rule must be applied: an exact count on those rows only.
    same = pos_keys.index_select(0, where.clamp(max=len(pos_keys) - 1)) == elem_keys
    matches = torch.zeros(c, dtype=torch.int64, device=device).scatter_add_(0, rows, same.long())
    twin = ((pos_sorted[:, 1:] == pos_sorted[:, :-1]) & sorted_valid[:, 1:]).any(dim=1)
    ranks = greater
    for row in ((matches > num_valid) | twin).nonzero().flatten().tolist():
        cols = sorted_valid[row].nonzero().flatten()
        equal = scores[row].unsqueeze(0) == pos_sorted[row, cols].unsqueeze(1)  # (t, G)
        before = torch.arange(g, device=device).unsqueeze(0) < sorted_idx[row, cols].unsqueeze(1)
        ranks[row, cols] += (equal & before).sum(dim=1)
    ranks = ranks.masked_fill(~sorted_valid, g)
    return torch.sort(ranks, dim=1).values


#: intra-op threads for the ranking ops of a chunk on the CPU. They are short, memory-bound kernels (compare,
#: nonzero, gathers, binary search); on the shared 2-core machine (benchmarks/bench_eval.py) intra-op threading
#: made them 2-9x slower in wall time and never faster. The similarity matmul outside keeps all threads.
RANKING_CPU_THREADS = 1


def rank_per_query(
    similarity: Optional[torch.Tensor] = None,
    q_pids: torch.Tensor | None = None,
    g_pids: torch.Tensor | None = None,
    *,
    q_feats: Optional[torch.Tensor] = None,
    g_feats: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
    topk: int = 0,
) -> PerQueryRanks:
    """Exact per-query first-hit rank, AP and INP (and optionally the stable top-k).

    Either ``similarity`` (Q, G) or ``q_feats`` (Q, D) and ``g_feats`` (G, D) (scores are
    ``q_feats @ g_feats.T``, computed one chunk of queries at a time; normalise the features first for
    cosine similarity). ``q_pids`` (Q,), ``g_pids`` (G,) integer ids. Work runs on the device of the
    scores; results are returned on the CPU. On the CPU the ranking of each chunk runs with
    ``RANKING_CPU_THREADS`` torch threads (:func:`irra_core.runtime.torch_threads`: torch's thread count is
    restored after each chunk).

    Raises:
        TypeError: no pids; ValueError: both or neither score inputs, bad shapes, pid counts that do not
            match the scores, an empty problem, or NaN/inf scores (naming the rows).
    """
    if q_pids is None or g_pids is None:
        raise TypeError("rank_per_query needs q_pids and g_pids")
    q_pids, g_pids = _check_pids(q_pids, "q_pids"), _check_pids(g_pids, "g_pids")
    num_q, num_g, device = _check_scores(similarity, q_feats, g_feats, len(q_pids), len(g_pids))
    if g_feats is not None:
        g_feats = g_feats.to(device=device, dtype=torch.float32)  # fp16/bf16 features: score in fp32
    positives = _positive_table(q_pids, g_pids)  # (Q, n) CPU
    chunk = chunk_size or default_chunk_size(num_g)
    first, ap, inp, npos = [], [], [], []
    top_i, top_v = [], []
    for start in range(0, num_q, chunk):
        stop = min(num_q, start + chunk)
        scores = similarity[start:stop] if similarity is not None else q_feats[start:stop].float() @ g_feats.T
        scores = scores.float().contiguous()
        # A finite sum implies finite entries (cheap); only then is the full check skipped.
        if not bool(torch.isfinite(scores.sum())) and not bool(torch.isfinite(scores).all()):
            raise ValueError(f"similarity rows {start}..{stop - 1} contain NaN or inf")
        with torch_threads(RANKING_CPU_THREADS, device):
            ranks = _rank_chunk(scores, positives[start:stop].to(device)).cpu()  # (C, n) ascending, padded with G
        for out, value in zip((first, ap, inp, npos), _query_measures(ranks, num_g)):
            out.append(value)
        if topk:
            v, i = _stable_topk(scores, topk)
            top_v.append(v.cpu())
            top_i.append(i.cpu())
    return PerQueryRanks(
        first_hit_rank=torch.cat(first),
        ap=torch.cat(ap),
        inp=torch.cat(inp),
        num_positives=torch.cat(npos),
        topk_indices=torch.cat(top_i) if topk else None,
        topk_scores=torch.cat(top_v) if topk else None,
    )


def _check_scores(similarity: Optional[torch.Tensor], q_feats: Optional[torch.Tensor],
                  g_feats: Optional[torch.Tensor], num_q_pids: int, num_g_pids: int) -> tuple[int, int, torch.device]:
    """``(Q, G, device)`` of the scores :func:`rank_per_query` was given, after checking their shapes."""
    if similarity is not None:
        if q_feats is not None or g_feats is not None:
            raise ValueError("pass either `similarity` or `q_feats`/`g_feats`, not both")
        if similarity.dim() != 2:
            raise ValueError(f"similarity must be (Q, G), got shape {tuple(similarity.shape)}")
        (num_q, num_g), device = similarity.shape, similarity.device
    else:
        if q_feats is None or g_feats is None:
            raise ValueError("pass `similarity` (Q, G) or both `q_feats` (Q, D) and `g_feats` (G, D)")
        if q_feats.dim() != 2 or g_feats.dim() != 2 or q_feats.shape[1] != g_feats.shape[1]:
            raise ValueError(
                f"q_feats (Q, D) and g_feats (G, D) must share D, got {tuple(q_feats.shape)} and "
                f"{tuple(g_feats.shape)}"
            )
        num_q, num_g, device = q_feats.shape[0], g_feats.shape[0], q_feats.device
    if num_q_pids != num_q or num_g_pids != num_g:
        raise ValueError(
            f"pid counts ({num_q_pids} queries, {num_g_pids} gallery) do not match the scores "
            f"({num_q} x {num_g})"
        )
    if num_q == 0 or num_g == 0:
        raise ValueError(f"empty retrieval problem ({num_q} queries x {num_g} gallery items)")
    return num_q, num_g, device


def _query_measures(ranks: torch.Tensor, num_g: int) -> tuple[torch.Tensor, ...]:
    """From the sorted 0-based ranks of each query's positives (C, n), padded with ``num_g``: the 1-based first-hit
    rank, AP, INP (float64) and the number of positives, each (C,)."""
    valid = ranks < num_g
    count = valid.sum(dim=1)
    one_based = (ranks + 1).double()
    hits = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float64).unsqueeze(0)
    ap = ((hits / one_based) * valid).sum(dim=1) / count
    last = ranks.masked_fill(~valid, -1).max(dim=1).values + 1
    return ranks[:, 0] + 1, ap, count.double() / last.double(), count


def summarize(per_query: PerQueryRanks, num_gallery: int, max_rank: int = 10) -> dict:
    """IRRA's summary of per-query results: ``R1, R5, R10, mAP, mINP`` (percent) and ``cmc``.

    ``cmc`` has ``min(max_rank, num_gallery)`` entries (IRRA keeps the first ``max_rank`` columns of the
    match matrix, fewer when the gallery is smaller).
    """
    first = per_query.first_hit_rank
    cmc = [100.0 * float((first <= k).double().mean()) for k in range(1, min(max_rank, num_gallery) + 1)]
    out = {f"R{k}": 100.0 * float((first <= k).double().mean()) for k in (1, 5, 10)}
    out["mAP"] = 100.0 * float(per_query.ap.mean())
    out["mINP"] = 100.0 * float(per_query.inp.mean())
    out["cmc"] = cmc
    return out


def rank_metrics(
    similarity: Optional[torch.Tensor] = None,
    q_pids: torch.Tensor | None = None,
    g_pids: torch.Tensor | None = None,
    max_rank: int = 10,
    *,
    q_feats: Optional[torch.Tensor] = None,
    g_feats: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
) -> dict:
    """IRRA's retrieval metrics, exact and in bounded memory.

    Args:
        similarity: (Q, G) scores, queries x gallery (t2i: captions x images). For i2t pass
            ``similarity.T`` and swap the pid roles.
        q_pids: (Q,) person ids of the queries; ``g_pids``: (G,) of the gallery.
        max_rank: length of the returned ``cmc`` (capped at G).
        q_feats, g_feats: (Q, D), (G, D) instead of ``similarity``; scores = ``q_feats @ g_feats.T``
            per chunk, so the Q x G matrix is never stored.
        chunk_size: queries per chunk (default: from a ~192 MB budget for the temporaries).

    Returns:
        ``{"R1", "R5", "R10", "mAP", "mINP"}`` as percent floats and ``"cmc"`` (list of
        ``min(max_rank, G)`` percents). Ties are broken deterministically: among equal scores the lower
        gallery index ranks first (a stable descending sort); IRRA's argsort leaves that order
        undefined, so only tied inputs can differ from it.
    """
    per_query = rank_per_query(
        similarity, q_pids, g_pids, q_feats=q_feats, g_feats=g_feats, chunk_size=chunk_size
    )
    num_gallery = similarity.shape[1] if similarity is not None else g_feats.shape[0]
    return summarize(per_query, num_gallery, max_rank)


def rank_metrics_full_sort(
    similarity: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor, max_rank: int = 10
) -> dict:
    """Straightforward reference: full stable argsort of the Q x G matrix, then IRRA's cumsum formulas.

    Memory O(Q x G) int64 (3.2 GB indices at ICFG size); used by the tests and the benchmark as the
    plain implementation of the same definitions (ties: lower gallery index first).
    """
    q_pids, g_pids = _check_pids(q_pids, "q_pids"), _check_pids(g_pids, "g_pids")
    order = torch.sort(similarity.float(), dim=1, descending=True, stable=True).indices
    matches = (g_pids[order] == q_pids.unsqueeze(1)).to(torch.int64)
    del order
    if not bool(matches.any(dim=1).all()):
        raise ValueError("every query needs at least one correct gallery item")
    cum = matches.cumsum(dim=1)
    num_rel = cum[:, -1]
    cmc = (cum[:, :max_rank] >= 1).double().mean(dim=0) * 100.0
    ranks = torch.arange(1, similarity.shape[1] + 1, dtype=torch.float64)
    ap = ((cum.double() / ranks) * matches).sum(dim=1) / num_rel
    last = similarity.shape[1] - 1 - matches.flip(1).argmax(dim=1)  # 0-based index of the last match
    inp = num_rel.double() / (last + 1).double()
    hit = (cum >= 1).double().mean(dim=0) * 100.0
    out = {f"R{k}": float(hit[min(k, similarity.shape[1]) - 1]) for k in (1, 5, 10)}
    out.update(mAP=100.0 * float(ap.mean()), mINP=100.0 * float(inp.mean()), cmc=cmc.tolist())
    return out
