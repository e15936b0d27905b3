"""IRRA's and PHP's training objectives: pure functions of tensors (torch only) and one registry.

Names and argument order of the ``compute_*`` functions follow IRRA's ``model/objectives.py`` so a reader can
diff the two; the maths is written anew from SPEC §1.10 and §2.5. Every function returns a scalar tensor.

The model's forward returns features and logits (``image_feats``, ``text_feats``, ``logit_scale``, and
``image_logits``/``text_logits``, ``mlm_scores``/``mlm_labels``, ``routing`` where its heads exist).
:data:`LOSSES` maps each loss name of ``cfg.loss.names`` to a function of those outputs (registered with
:func:`register_loss`), and
:func:`total_loss` weighs them with ``cfg.loss.weights`` (IRRA's ``id_loss_weight``, PHP's hard-coded
``5 x ITC`` and ``aux_factor`` are configuration values). Adding a loss is one ``@register_loss`` function
and its weight in ``irra_core.config.DEFAULT_LOSS_WEIGHTS``.

Multi-process training (torchrun) computes the contrastive objectives (SDM, ITC, CMPM) over the *global*
batch: the engine passes a ``gather`` (:func:`irra_core.distributed.gather_batch`, which keeps gradients to
the local part) to :func:`total_loss`, as open_clip's ``ClipLoss`` takes ``gather_with_grad``; without
one every loss uses exactly the tensors of this process.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F

__all__ = [
    "compute_sdm", "sdm_targets", "compute_itc", "compute_id", "compute_cmpm", "compute_mlm", "moe_aux_loss",
    "LOSSES", "register_loss", "total_loss", "batch_metrics", "Gather", "MLM_IGNORE_INDEX",
]

#: label of positions the MLM loss ignores (IRRA pads labels with 0, which is also the id of "!")
MLM_IGNORE_INDEX = 0

#: a gather for cross-rank contrastive losses: local (image (b, D), text (b, D), pids (b,)) -> the global
#: batch (B, D), (B, D), (B,) in rank order, with gradients to the local part
Gather = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


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


# ---------------------------------------------------------------------------------------------- registry
#: loss name (``cfg.loss.names``) -> function (model outputs, batch, gather) -> scalar, before its weight
LOSSES: dict[str, Callable[..., torch.Tensor]] = {}


def register_loss(name: str) -> Callable:
    """Decorator: ``@register_loss("sdm")`` makes the function the loss ``name`` of :data:`LOSSES`."""
    def register(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is registered twice ({LOSSES[name].__name__}, {fn.__name__})")
        LOSSES[name] = fn
        return fn
    return register


def _global(outputs: dict, batch: dict, gather: Gather | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    image, text, pids = outputs["image_feats"], outputs["text_feats"], batch["pids"]
    return (image, text, pids) if gather is None else gather(image, text, pids)


@register_loss("sdm")
def sdm_loss(outputs: dict, batch: dict, gather: Gather | None = None) -> torch.Tensor:
    """:func:`compute_sdm` of the (global) batch's features."""
    image, text, pids = _global(outputs, batch, gather)
    return compute_sdm(image, text, pids, outputs["logit_scale"])


@register_loss("itc")
def itc_loss(outputs: dict, batch: dict, gather: Gather | None = None) -> torch.Tensor:
    """:func:`compute_itc` of the (global) batch's features."""
    image, text, _ = _global(outputs, batch, gather)
    return compute_itc(image, text, outputs["logit_scale"])


@register_loss("cmpm")
def cmpm_loss(outputs: dict, batch: dict, gather: Gather | None = None) -> torch.Tensor:
    """:func:`compute_cmpm` of the (global) batch's features."""
    return compute_cmpm(*_global(outputs, batch, gather))


@register_loss("id")
def id_loss(outputs: dict, batch: dict, gather: Gather | None = None) -> torch.Tensor:
    """:func:`compute_id` of this process's classifier logits."""
    return compute_id(outputs["image_logits"], outputs["text_logits"], batch["pids"])


@register_loss("mlm")
def mlm_loss(outputs: dict, batch: dict, gather: Gather | None = None) -> torch.Tensor:
    """:func:`compute_mlm` of the MLM head's scores at this process's masked positions."""
    return compute_mlm(outputs["mlm_scores"], outputs["mlm_labels"])


@register_loss("aux")
def aux_loss(outputs: dict, batch: dict, gather: Gather | None = None) -> torch.Tensor:
    """PHP's load balancing: :func:`moe_aux_loss` summed over the EFP layers of both towers (``routing``)."""
    return sum(sum(layer.aux for layer in layers) for layers in outputs["routing"].values())


def total_loss(outputs: dict, batch: dict, weights: Mapping[str, float],
               gather: Gather | None = None) -> dict[str, torch.Tensor]:
    """The weighted loss terms of one batch, ``{"<name>_loss": weight * LOSSES[name](...)}``; the training
    objective is their sum.

    Args:
        outputs: the model's forward output (features, logits, routing).
        batch: the data layer's batch (``pids`` ...).
        weights: loss name -> weight, one entry per loss to compute (``cfg.loss_weights()``).
        gather: for multi-process training, the gather of the contrastive losses (see :data:`Gather`).

    Raises:
        KeyError: a name has no function in :data:`LOSSES`.
    """
    unknown = [name for name in weights if name not in LOSSES]
    if unknown:
        raise KeyError(f"no loss function for {unknown}; irra_core.losses.LOSSES has {sorted(LOSSES)}")
    return {f"{name}_loss": LOSSES[name](outputs, batch, gather) * weight for name, weight in weights.items()}


def batch_metrics(outputs: dict, batch: dict) -> dict:
    """What the training log reports besides the losses (detached): ``temperature``, ``img_acc`` /
    ``txt_acc`` (with ID logits), ``mlm_acc`` (with MLM scores) and, with routing, ``routing``:
    ``{"image": [...], "text": [...]}``, one ``{"counts": (E,) int64, "aux": scalar}`` per EFP layer."""
    feats = outputs["image_feats"]
    metrics: dict = {"temperature": torch.tensor(1.0 / outputs["logit_scale"], dtype=torch.float32,
                                                 device=feats.device)}
    if "image_logits" in outputs:
        metrics["img_acc"] = (outputs["image_logits"].argmax(dim=1) == batch["pids"]).float().mean().detach()
        metrics["txt_acc"] = (outputs["text_logits"].argmax(dim=1) == batch["pids"]).float().mean().detach()
    if "mlm_scores" in outputs:
        metrics["mlm_acc"] = (outputs["mlm_scores"].argmax(dim=1) == outputs["mlm_labels"]).float().mean().detach()
    if "routing" in outputs:
        metrics["routing"] = {
            modality: [{"counts": torch.bincount(r.topk.reshape(-1), minlength=r.gate_logits.shape[-1]),
                        "aux": r.aux.detach()} for r in layers]
            for modality, layers in outputs["routing"].items()}
    return metrics
