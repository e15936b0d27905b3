"""PHP = IRRA + CRFM (unified tokens) + EFP (transformer blocks with a mixture of adapters): :class:`PHP`.

Written anew from SPEC §2.4-§2.5 and §2.11-§2.12. Modules are named as the paper names them: ``crfm``,
``efp.resblocks.N.{attn,ln_1,ln_2,ln_3,mlp,comb_param,moe.*}`` (the mixture of adapter experts). The release
calls them ``safl``, ``shared_transformer`` and ``feed_forward``: :data:`RELEASE_NAMES` maps those keys when
a release checkpoint or an older run folder is loaded (:func:`rename_release_keys`, applied by
``PHP.load_state_dict`` and by the checkpoint importer) and in the optimiser's lr rules. Correct by default,
with the release's behaviour behind named switches:

* ``crfm_attend_padding`` - the release pools text tokens over all L positions, padding included;
  by default the pooling is restricted to the caption (positions up to EOT).
* ``efp_attention`` - ``"tokens"`` (default): each sample's cnum tokens attend to each other;
  ``"batch"``: the release's sequence-first ``nn.MultiheadAttention`` fed batch-first tensors, i.e. the B
  samples of a batch attend to each other (a test-set leak, SPEC §2.11).
* ``moe_gating`` - ``"modality"`` (default): separate task gates for image and text, as the paper
  describes; ``"shared"``: the release's single gate for both towers.

Routing is returned per call (:class:`LayerRouting`) and never accumulated in buffers: PHP's
``expert_count_accum`` counters leak between passes and into checkpoints (SPEC §2.9).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from irra_core.config import Config
from irra_core.losses import moe_aux_loss
from irra_core.model import fast
from irra_core.model.clip import Attention, CLIPConfig, LayerNorm, clip_mlp
from irra_core.model.irra import IRRA, text_global_index

__all__ = ["PHP", "CRFM", "Adapter", "MoEAdapters", "EFPBlock", "EFP", "LayerRouting", "MODALITIES",
           "RELEASE_NAMES", "rename_release_key", "rename_release_keys"]

MODALITIES = ("image", "text")

#: PHP's release module names -> ours (CRFM is the release's ``SAFL``, EFP its ``shared_transformer``, the
#: experts its ``feed_forward``), as (pattern, replacement) on state-dict keys and parameter names
RELEASE_NAMES = ((re.compile(r"(^|\.)safl\."), r"\1crfm."), (re.compile(r"(^|\.)shared_transformer\."), r"\1efp."),
                 (re.compile(r"\.feed_forward\."), ".moe."))


def rename_release_key(name: str) -> str:
    """A state-dict key or parameter name in the release's names -> ours
    (``shared_transformer.resblocks.0.feed_forward.experts.1.up.bias`` -> ``efp.resblocks.0.moe.experts.1.up.bias``);
    other names come back unchanged."""
    for pattern, replacement in RELEASE_NAMES:
        name = pattern.sub(replacement, name)
    return name


def rename_release_keys(state: Mapping[str, object]) -> dict:
    """A state dict with :func:`rename_release_key` applied to every key (order kept)."""
    return {rename_release_key(key): value for key, value in state.items()}


def _load_release_names(module: nn.Module, state_dict: dict, prefix: str, *_) -> None:
    # load_state_dict pre-hook: rename the release's keys under this module's prefix in place
    for key in [k for k in state_dict if k.startswith(prefix)]:
        renamed = prefix + rename_release_key(key[len(prefix):])
        if renamed != key:
            state_dict[renamed] = state_dict.pop(key)


class CRFM(nn.Module):
    """Cross-modal unified tokens (PHP's ``SAFL``): cnum learned queries pool the tokens of one tower.

    A = softmax over tokens of U X^T (no 1/sqrt(d) inside the softmax, as released), Z = A X / sqrt(D),
    out = feed(Z) with feed = LayerNorm -> Linear(D, 4D) -> GELU -> Dropout -> Linear(4D, D), no residual.
    One module serves both towers.
    """

    def __init__(self, dim: int, cnum: int, dropout: float = 0.3) -> None:
        super().__init__()
        self.dim, self.cnum = dim, cnum
        self.part_tokens = nn.Parameter(torch.empty(cnum, dim))
        nn.init.kaiming_normal_(self.part_tokens)
        self.feed = nn.Sequential(LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(4 * dim, dim))
        #: set by :func:`irra_core.model.capture.capture_attention`: called with (modality, A (B, cnum, N))
        self.recorder: Callable[[str, torch.Tensor], None] | None = None

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None = None, *,
                modality: str = "image") -> torch.Tensor:
        """Pool tokens (B, N, D) into (B, cnum, D); ``valid`` (B, N) bool excludes positions (text padding)."""
        logits = torch.einsum("cd,bnd->bcn", self.part_tokens.to(tokens.dtype), tokens).float()
        if valid is not None:
            logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
        weights = logits.softmax(dim=-1)
        if self.recorder is not None:
            self.recorder(modality, weights)
        pooled = (weights.to(tokens.dtype) @ tokens) / math.sqrt(self.dim)
        return self.feed(pooled)


class Adapter(nn.Module):
    """One expert: z + Dropout(up(Dropout(GELU(down(norm(z)))))), a bottleneck D -> D/r -> D.

    :class:`MoEAdapters` evaluates all experts at once from their stacked parameters; this forward is the
    readable per-expert definition (used by tests to check the vectorised path).
    """

    def __init__(self, dim: int, bottleneck: int, dropout: float) -> None:
        super().__init__()
        self.norm = LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.dropout = nn.Dropout(dropout)
        # PHP (build.py) starts every expert as the identity: kaiming-uniform(a=sqrt 5) down, zero bias, zero up
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., D) -> (..., D)."""
        return z + self.dropout(self.up(self.dropout(F.gelu(self.down(self.norm(z))))))


@dataclass
class LayerRouting:
    """Routing of one EFP layer for one pass (all tensors batch-first; T = cnum tokens per sample).

    gate_logits (B, T, E), topk (B, T, k) expert ids in descending logit order, weights (B, T, k)
    (softmax over the k selected logits), aux: the layer's load-balancing term (scalar, differentiable).
    """

    modality: str
    layer: int
    gate_logits: torch.Tensor
    topk: torch.Tensor
    weights: torch.Tensor
    aux: torch.Tensor

    def counts(self, num_experts: int) -> torch.Tensor:
        """(E,) int64: how often each expert was among a token's top-k in this pass."""
        return torch.bincount(self.topk.reshape(-1), minlength=num_experts)


class MoEAdapters(nn.Module):
    """PHP's ``MoeLayer``: a top-k mixture of :class:`Adapter` experts with an input gate and a task gate.

    gate = (1 - alpha) input_gate(z) + alpha task_gate(c), c = the block's ``comb_param``; top-k over E
    (sorted), routing weights = softmax over the k selected logits, y = sum_k w_k expert_k(z).
    With ``modality_gates`` the text tower uses its own ``task_gate_text`` (the name keeps the
    ``moe.task_gate`` lr rule).

    Dispatch is dense and vectorised: every expert is evaluated on every token from stacked parameters
    (two einsums), then combined with a (tokens, E) weight matrix that is zero outside the top-k. The
    adapters are tiny (D -> D/r -> D), so this costs E/k times the sparse FLOPs of the experts but no
    gather/scatter and no Python loop over tokens or experts.
    """

    def __init__(self, dim: int, num_experts: int, topk: int, reduction: int, dropout: float,
                 modality_gates: bool, layer_index: int = 0) -> None:
        super().__init__()
        if not 1 <= topk <= num_experts:
            raise ValueError(f"topk must be in [1, num_experts={num_experts}], got {topk}")
        if dim % reduction:
            raise ValueError(f"width {dim} is not divisible by the adapter reduction {reduction}")
        self.num_experts, self.topk, self.layer_index = num_experts, topk, layer_index
        self.alpha = nn.Parameter(torch.tensor(0.5))
        self.input_gate = nn.Linear(dim, num_experts, bias=False)
        self.task_gate = nn.Linear(dim, num_experts, bias=False)
        self.task_gate_text = nn.Linear(dim, num_experts, bias=False) if modality_gates else None
        self.experts = nn.ModuleList([Adapter(dim, dim // reduction, dropout) for _ in range(num_experts)])
        #: set by :func:`irra_core.model.capture.capture_routing`; receives each :class:`LayerRouting`
        self.recorder: Callable[[LayerRouting], None] | None = None

    def gate_logits(self, z: torch.Tensor, task_param: torch.Tensor, modality: str) -> torch.Tensor:
        """Router logits (B, T, E) for tokens z (B, T, D) and the block's task vector (D,)."""
        task_gate = self.task_gate_text if (modality == "text" and self.task_gate_text is not None) else self.task_gate
        task = F.linear(task_param.to(task_gate.weight.dtype), task_gate.weight)  # (E,), one bias per layer
        alpha = self.alpha.to(z.dtype)
        return (1 - alpha) * self.input_gate(z) + alpha * task.to(z.dtype)

    def forward(self, z: torch.Tensor, task_param: torch.Tensor, modality: str) -> tuple[torch.Tensor, LayerRouting]:
        """z (B, T, D) -> (y (B, T, D), routing)."""
        logits = self.gate_logits(z, task_param, modality)
        top_logits, top_idx = logits.topk(self.topk, dim=-1, sorted=True)
        weights = top_logits.float().softmax(dim=-1)
        aux = moe_aux_loss(logits, top_idx, self.num_experts)
        dense = torch.zeros(*logits.shape, dtype=weights.dtype, device=z.device).scatter(-1, top_idx, weights)
        y = z + torch.einsum("bte,ebtd->btd", dense.to(z.dtype), self._expert_updates(z))
        routing = LayerRouting(modality, self.layer_index, logits, top_idx, weights, aux)
        if self.recorder is not None:
            self.recorder(routing)
        return y, routing

    def _expert_updates(self, z: torch.Tensor) -> torch.Tensor:
        """(E, B, T, D): up(GELU(down(norm_e(z)))) of every expert (without the residual z)."""
        experts = self.experts
        dtype = z.dtype
        first = experts[0].norm
        # the normalisation is shared; each expert applies its own affine (LayerNorm in fp32, like CLIP's)
        normed = F.layer_norm(z.float(), first.normalized_shape, eps=first.eps)
        scale = torch.stack([e.norm.weight for e in experts]).float()[:, None, None, :]
        shift = torch.stack([e.norm.bias for e in experts]).float()[:, None, None, :]
        h = (normed[None] * scale + shift).to(dtype)
        down_w = torch.stack([e.down.weight for e in experts]).to(dtype)  # (E, r, D)
        down_b = torch.stack([e.down.bias for e in experts]).to(dtype)  # (E, r)
        up_w = torch.stack([e.up.weight for e in experts]).to(dtype)  # (E, D, r)
        up_b = torch.stack([e.up.bias for e in experts]).to(dtype)  # (E, D)
        h = torch.einsum("ebtd,erd->ebtr", h, down_w) + down_b[:, None, None, :]
        h = experts[0].dropout(F.gelu(h))
        h = torch.einsum("ebtr,edr->ebtd", h, up_w) + up_b[:, None, None, :]
        return experts[0].dropout(h)


class EFPBlock(nn.Module):
    """PHP's ``MOEResidualAttentionBlock``: attention, then a dense MLP and the MoE branch in parallel.

    x = x + attn(ln_1(x)); y = MoE(ln_3(x), comb_param); x = x + mlp(ln_2(x)) + y. PyTorch default
    initialisation for attention and MLP, ``comb_param`` N(0, 1), as released.
    """

    def __init__(self, width: int, heads: int, num_experts: int, topk: int, reduction: int, dropout: float,
                 modality_gates: bool, layer_index: int) -> None:
        super().__init__()
        self.attn = Attention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = clip_mlp(width)
        self.ln_2 = LayerNorm(width)
        self.ln_3 = LayerNorm(width)
        self.comb_param = nn.Parameter(torch.randn(width))
        self.moe = MoEAdapters(width, num_experts, topk, reduction, dropout, modality_gates, layer_index)

    def forward(self, x: torch.Tensor, modality: str, batch_axis_attention: bool) -> tuple[torch.Tensor, LayerRouting]:
        """x (B, T, D) -> (B, T, D), routing. ``batch_axis_attention`` reproduces the release's leak."""
        h = self.ln_1(x)
        if batch_axis_attention:
            # the release's MultiheadAttention is sequence-first: (B, T, D) is read as sequence B, batch T
            x = x + self.attn(h.transpose(0, 1)).transpose(0, 1)
        else:
            x = x + self.attn(h)
        y, routing = self.moe(self.ln_3(x), self.comb_param, modality)
        return x + self.mlp(self.ln_2(x)) + y, routing


class EFP(nn.Module):
    """PHP's ``MOETransformer`` (the release's ``shared_transformer``): a stack of :class:`EFPBlock` shared by
    both towers."""

    def __init__(self, width: int, layers: int, heads: int, num_experts: int, topk: int, reduction: int,
                 dropout: float = 0.1, *, attention: str = "tokens", gating: str = "modality") -> None:
        super().__init__()
        if attention not in ("tokens", "batch"):
            raise ValueError(f"efp_attention must be 'tokens' or 'batch', got {attention!r}")
        if gating not in ("modality", "shared"):
            raise ValueError(f"moe_gating must be 'modality' or 'shared', got {gating!r}")
        self.attention, self.gating = attention, gating
        self.num_experts = num_experts
        self.resblocks = nn.ModuleList([
            EFPBlock(width, heads, num_experts, topk, reduction, dropout, gating == "modality", i)
            for i in range(layers)])

    def forward(self, x: torch.Tensor, modality: str) -> tuple[torch.Tensor, list[LayerRouting]]:
        """x (B, T, D) unified tokens of one tower -> (B, T, D) and one :class:`LayerRouting` per layer."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        routing = []
        for block in self.resblocks:
            x, layer = block(x, modality, self.attention == "batch")
            routing.append(layer)
        return x, routing


class PHP(IRRA):
    """PHP (SPEC §2.6): IRRA whose global features add the mean of EFP(CRFM(tokens)) of each tower.

    g_image = CLS + mean_c EFP(CRFM(patch tokens))_c, g_text = EOT + mean_c EFP(CRFM(caption tokens))_c, with
    one CRFM and one EFP shared by both towers. ``crfm_attend_padding`` (the release) pools text over all L
    positions; by default CRFM sees the caption up to EOT, and under ``trim_text_padding`` each caption then
    runs packed on its own tokens. ``prune_to_global_token`` never applies: CRFM reads every token.
    """

    find_unused_parameters = True

    def __init__(self, cfg: Config, clip_config: CLIPConfig, num_classes: int) -> None:
        super().__init__(cfg, clip_config, num_classes)
        m = cfg.model
        self.crfm = CRFM(self.embed_dim, m.cnum)
        self.efp = EFP(self.embed_dim, m.moe_layers, m.moe_heads, m.num_experts, m.topk, m.reduction,
                       m.adapter_dropout, attention=m.efp_attention, gating=m.moe_gating)
        self.crfm_attend_padding = m.crfm_attend_padding
        self.register_load_state_dict_pre_hook(_load_release_names)  # the release's and older runs' keys

    def image_features(self, images: torch.Tensor, need_tokens: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor, list[LayerRouting]]:
        """images (B, 3, H, W) -> (global (B, D) float32, all tokens (B, 1 + P, D), one routing per EFP layer)."""
        tokens = self.base_model.encode_image(images)
        unified, routing = self.efp(self.crfm(tokens[:, 1:], modality="image"), "image")
        return tokens[:, 0].float() + unified.float().mean(dim=1), tokens, routing

    def text_features(self, caption_ids: torch.Tensor, need_tokens: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor, list[LayerRouting]]:
        """caption ids (B, L) -> (global (B, D) float32, tokens (B, L', D), one routing per EFP layer).

        L' = L, or the batch's longest caption under ``trim_text_padding`` (unless CRFM attends padding).
        """
        tokens, valid, eot = self._text_tokens(caption_ids)
        # (the order of the calls fixes the order in which backward sums the gradients of `tokens`)
        unified, routing = self.efp(self.crfm(tokens, valid, modality="text"), "text")
        feats = tokens[torch.arange(tokens.shape[0], device=tokens.device), eot].float()
        return feats + unified.float().mean(dim=1), tokens, routing

    def _text_tokens(self, caption_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(tokens (B, L', D), the positions CRFM pools (B, L') bool or None for all, EOT index (B,))."""
        eot = text_global_index(caption_ids)
        if self.trim_text_padding and not self.crfm_attend_padding:  # CRFM reads nothing after EOT: each
            caption_ids = fast.trim_padding(caption_ids, eot)  # caption runs on its own tokens
            tokens = fast.text_tokens_packed(self.base_model, caption_ids, eot)
        else:
            tokens = self.base_model.encode_text(caption_ids)
        # CRFM pools the caption up to and including EOT (the release: every position)
        valid = None if self.crfm_attend_padding else fast.prefix_mask(eot, caption_ids.shape[1])
        return tokens, valid, eot

    def efp_inputs(self, inputs: torch.Tensor, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The part of a global feature computed per sample, whatever ``efp_attention`` is: everything before EFP.

        Args:
            inputs: images (B, 3, H, W) (``modality="image"``) or caption ids (B, L) (``"text"``).

        Returns:
            ``(base, unified)``: the CLS / EOT feature (B, D) float32 and CRFM's unified tokens (B, cnum, D).
            :meth:`efp_global` turns a batch of them into global features; the two together equal
            ``encode_image`` / ``encode_text`` (tests/test_leak_curve.py). With ``efp_attention="batch"`` only
            the EFP step mixes the samples of a batch, so an evaluation can regroup the samples into batches
            without re-running the towers (:func:`irra_core.evaluation.audit.encode_arrangements`).

        Raises:
            ValueError: ``modality`` is not ``"image"`` or ``"text"``.
        """
        if modality == "image":
            tokens = self.base_model.encode_image(inputs)
            return tokens[:, 0].float(), self.crfm(tokens[:, 1:], modality="image")
        if modality == "text":
            tokens, valid, eot = self._text_tokens(inputs)
            unified = self.crfm(tokens, valid, modality="text")
            return tokens[torch.arange(tokens.shape[0], device=tokens.device), eot].float(), unified
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")

    def efp_global(self, base: torch.Tensor, unified: torch.Tensor, modality: str) -> torch.Tensor:
        """Global features (B, D) float32 = base + mean over cnum of EFP(unified), one batch of (base (B, D),
        unified (B, cnum, D)) from :meth:`efp_inputs` (SPEC §2.6). With ``efp_attention="batch"`` the result of
        a sample depends on the other rows of the batch (SPEC §2.11)."""
        out, _ = self.efp(unified, modality)
        return base + out.float().mean(dim=1)
