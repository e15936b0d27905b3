"""IRRA's and PHP's training objectives as pure functions of tensors (torch only).

Names and argument order follow IRRA's ``model/objectives.py`` so a reader can diff the two; the maths is
written anew from SPEC §1.10 and §2.5. Every function returns a scalar tensor; the *weights* of the
objectives (IRRA's ``id_loss_weight``, PHP's hard-coded ``5 x ITC`` and ``aux_factor``) are applied by the
model from ``cfg.loss.*_weight``, not here.

Multi-process training (torchrun) computes the contrastive objectives (SDM, ITC, CMPM) over the *global*
batch: the engine enters :func:`global_batch` with a gather function, and the three functions then see every
rank's features (gathered with gradients, see :mod:`irra_core.distributed`). Outside that context they
use exactly the tensors they are given.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

__all__ = [
    "compute_sdm", "sdm_targets", "compute_itc", "compute_id", "compute_cmpm", "compute_mlm", "moe_aux_loss",
    "global_batch", "MLM_IGNORE_INDEX",
]

#: label of positions the MLM loss ignores (IRRA pads labels with 0, which is also the id of "!")
MLM_IGNORE_INDEX = 0

# A gather for cross-rank contrastive losses: (image (b, D), text (b, D), pids (b,)) -> the global batch.
_Gather = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
_GATHER: _Gather | None = None


@contextlib.contextmanager
def global_batch(gather: _Gather | None) -> Iterator[None]:
    """Within this context SDM, ITC and CMPM gather image/text features and pids across ranks first.

    Args:
        gather: maps the local ``(image_feats (b, D), text_feats (b, D), pids (b,))`` to the global
            ``(B, D), (B, D), (B,)`` in rank order, keeping gradients to the local part
            (:func:`irra_core.distributed.gather_batch`). ``None`` leaves the losses local.
    """
    global _GATHER
    previous, _GATHER = _GATHER, gather
    try:
        yield
    finally:
        _GATHER = previous


def _maybe_gather(image_feats: torch.Tensor, text_feats: torch.Tensor,
                  pids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if _GATHER is None:
        return image_feats, text_feats, pids
    return _GATHER(image_feats, text_feats, pids)


def _same_identity(pids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """y (B, B) with y_ij = 1 when sample i and sample j share a person id."""
    pids = pids.reshape(-1)
    return (pids[:, None] == pids[None, :]).to(dtype)


def sdm_targets(pids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """SDM's target distribution q (B, B): q_ij = y_ij / sum_k y_ik with y_ij = [pid_i == pid_j].

    Row i spreads its mass evenly over the items of the batch that show the same person as item i
    (IRRA paper §3.3; SPEC §1.10). Rows sum to 1; y is symmetric, so column sums are 1 too.

    Args:
        pids: (B,) person ids of the batch (any integer ids; repeats mark the positives).
        dtype: floating dtype of the result.
    """
    y = _same_identity(pids, dtype)
    return y / y.sum(dim=1, keepdim=True)


def _kl_to_targets(logits: torch.Tensor, targets: torch.Tensor, epsilon: float) -> torch.Tensor:
    """mean_i sum_j p_ij (log p_ij - log(q_ij + eps)) with p = softmax_j(logits); logits, targets (B, B)."""
    log_p = F.log_softmax(logits, dim=1)
    return (log_p.exp() * (log_p - torch.log(targets + epsilon))).sum(dim=1).mean()


def compute_sdm(image_feats: torch.Tensor, text_feats: torch.Tensor, pids: torch.Tensor,
                logit_scale: torch.Tensor | float, epsilon: float = 1e-8) -> torch.Tensor:
    """Similarity Distribution Matching (IRRA): KL(p || q) in both directions.

    p^{i2t}_ij = softmax_j(s cos(v_i, t_j)), p^{t2i}_ij = softmax_j(s cos(t_i, v_j)) and the target
    q_ij = y_ij / sum_k y_ik spreads the mass evenly over the same-identity items of the batch.

    Args:
        image_feats: (B, D) image features (normalised here).
        text_feats: (B, D) text features (normalised here).
        pids: (B,) person ids; repeated ids mark positives.
        logit_scale: s, a scalar (IRRA: 1 / temperature = 50).
        epsilon: keeps log(q) finite for the zero targets.

    Returns:
        A scalar: the sum of the image->text and text->image terms, each a mean over the batch.
    """
    image_feats, text_feats, pids = _maybe_gather(image_feats, text_feats, pids)
    image_norm = F.normalize(image_feats, dim=-1)
    text_norm = F.normalize(text_feats, dim=-1)
    targets = sdm_targets(pids, image_norm.dtype)
    image_to_text = logit_scale * image_norm @ text_norm.t()
    return (_kl_to_targets(image_to_text, targets, epsilon)
            + _kl_to_targets(image_to_text.t(), targets.t(), epsilon))


def compute_itc(image_feats: torch.Tensor, text_feats: torch.Tensor,
                logit_scale: torch.Tensor | float) -> torch.Tensor:
    """CLIP's symmetric InfoNCE (IRRA's ITC): the matching pair is the only positive.

    Same-identity off-diagonal pairs count as negatives, as in IRRA.

    Args:
        image_feats: (B, D) image features (normalised here).
        text_feats: (B, D) text features, row i pairs with image i.
        logit_scale: s, a scalar.

    Returns:
        A scalar: (CE(s V T^T, arange B) + CE(s T V^T, arange B)) / 2.
    """
    pids = torch.zeros(image_feats.shape[0], dtype=torch.long, device=image_feats.device)
    image_feats, text_feats, _ = _maybe_gather(image_feats, text_feats, pids)
    logits = logit_scale * F.normalize(image_feats, dim=-1) @ F.normalize(text_feats, dim=-1).t()
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def compute_id(image_logits: torch.Tensor, text_logits: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    """Identity classification loss: mean of the image and text cross-entropies.

    Args:
        image_logits: (B, C) classifier logits of the image features.
        text_logits: (B, C) classifier logits of the text features.
        pids: (B,) training person ids in ``[0, C)``.

    Returns:
        A scalar: (CE(image_logits, pids) + CE(text_logits, pids)) / 2.
    """
    return (F.cross_entropy(image_logits, pids) + F.cross_entropy(text_logits, pids)) / 2


def compute_cmpm(image_feats: torch.Tensor, text_feats: torch.Tensor, pids: torch.Tensor,
                 epsilon: float = 1e-8) -> torch.Tensor:
    """Cross-Modal Projection Matching, as IRRA implements it.

    p_ij = softmax_j(v_i . t'_j) projects the *unnormalised* image feature onto the normalised text
    feature (no temperature), and symmetrically for text; the target is q_ij = y_ij / ||y_i||_2 (an L2,
    not L1, normalisation, so q does not sum to one and the value can be negative).

    Args:
        image_feats: (B, D) image features (not normalised).
        text_feats: (B, D) text features (not normalised).
        pids: (B,) person ids.
        epsilon: keeps log(q) finite for the zero targets.

    Returns:
        A scalar: the image->text plus the text->image term.
    """
    image_feats, text_feats, pids = _maybe_gather(image_feats, text_feats, pids)
    y = _same_identity(pids, image_feats.dtype)
    targets = y / y.norm(dim=1, keepdim=True)
    image_proj_text = image_feats @ F.normalize(text_feats, dim=-1).t()
    text_proj_image = text_feats @ F.normalize(image_feats, dim=-1).t()
    return (_kl_to_targets(image_proj_text, targets, epsilon)
            + _kl_to_targets(text_proj_image, targets.t(), epsilon))


def compute_mlm(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked-language-modelling cross-entropy over the masked positions (label 0 is ignored).

    Args:
        scores: (N, V) vocabulary logits, one row per text position (IRRA flattens (B, L)).
        labels: (N,) original token ids at masked positions, 0 elsewhere.

    Returns:
        A scalar: the mean cross-entropy over positions whose label is not 0 (NaN if none is).
    """
    return F.cross_entropy(scores, labels, ignore_index=MLM_IGNORE_INDEX)


def moe_aux_loss(gate_logits: torch.Tensor, topk_indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    """PHP's load-balancing term of one MoE layer: sum_e P_e f_e (SPEC §2.5).

    P_e is the mean over tokens of the full softmax over experts and f_e the fraction of tokens whose
    top-k contains expert e (so sum_e f_e = k). The value is k / E at perfect balance and grows as the
    router concentrates on few experts. Computed in float32 whatever the input dtype (PHP used fp16).

    Args:
        gate_logits: (T, E) router logits of T tokens (leading dims are flattened).
        topk_indices: (T, k) experts selected for each token.
        num_experts: E.

    Returns:
        A float32 scalar, differentiable with respect to ``gate_logits``.
    """
    gate_logits = gate_logits.reshape(-1, num_experts).float()
    topk_indices = topk_indices.reshape(gate_logits.shape[0], -1)
    mean_prob = gate_logits.softmax(dim=-1).mean(dim=0)
    selected = F.one_hot(topk_indices, num_experts).sum(dim=1).float()  # (T, E), 0/1 per expert
    return (mean_prob * selected.mean(dim=0)).sum()
