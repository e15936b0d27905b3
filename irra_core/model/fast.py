"""Speed paths: the same outputs as the plain towers of :mod:`irra_core.model.clip`, with less work.

Nothing here changes a number beyond float summation order; each path is guarded by an exact-equality test
(``tests/test_model_global_token.py``, ``tests/test_model_clip.py``). The model applies them:

* :func:`use_fast_attention` (at build time): on the CPU an explicit softmax(q k^T / sqrt(d)) v beats the
  fused SDPA kernel for short sequences, so every :class:`~irra_core.model.clip.Attention` gets :func:`attend`;
* ``IRRA.trim_text_padding``: :func:`trim_padding` cuts captions to the batch's longest (the text tower is
  causal), and :func:`text_tokens_packed` runs each caption on its own tokens (PHP, CRFM masking padding);
* ``IRRA.prune_to_global_token``: :func:`image_global_token` / :func:`text_global_token` compute only what the
  CLS / EOT token depends on: the last block at that token alone (:func:`block_at`, ~20% fewer FLOPs for 4
  layers) and, in the causal text tower, the blocks before it on the packed prefixes (:func:`block_packed`).

While any attention is recorded (:func:`irra_core.model.capture.capture_attention`) and under
``torch.compile`` (packing selects with a data-dependent mask) the paths fall back to the plain computation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from irra_core.model.clip import (CLIP, Attention, ResidualAttentionBlock, Transformer, VisionTransformer,
                                  attention_probs, sdpa)

__all__ = ["CPU_EXPLICIT_ATTENTION_MAX_KEYS", "attend", "use_fast_attention", "trim_padding", "prefix_mask",
           "PrefixPacking", "attention_packed", "block_packed", "block_at", "transformer_at", "transformer_packed",
           "image_global_token", "text_global_token", "text_tokens_packed", "recording"]

#: On the CPU an explicit softmax beats the fused SDPA kernel for short sequences (forward + backward, 2
#: threads: 7.8 vs 11.4 ms at batch 32, 4 heads, 49 tokens; 8.5 vs 10.5 ms at 77 causal tokens) and loses
#: from ~128 keys on (59.7 vs 45.1 ms at 193 tokens, ViT-B/16 at 384x128). GPUs always use SDPA.
CPU_EXPLICIT_ATTENTION_MAX_KEYS = 128


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`~irra_core.model.clip.sdpa`'s result (q (B, h, Nq, d), k/v (B, h, Nk, d) -> (B, h, Nq, d)) with
    the faster kernel for the device and length (see ``CPU_EXPLICIT_ATTENTION_MAX_KEYS``)."""
    if q.device.type != "cpu" or k.shape[-2] > CPU_EXPLICIT_ATTENTION_MAX_KEYS:
        return sdpa(q, k, v, causal, mask)
    return attention_probs(q, k, causal, mask).to(v.dtype) @ v


def use_fast_attention(model: nn.Module) -> nn.Module:
    """Give every :class:`~irra_core.model.clip.Attention` of ``model`` the :func:`attend` kernel; returns it."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.kernel = attend
    return model


def recording(transformer: Transformer) -> bool:
    """True while any block's attention is being recorded (then every position must be computed)."""
    return any(block.attn.recorder is not None for block in transformer.resblocks)


def trim_padding(caption_ids: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """caption ids (B, L) -> (B, L'), L' = the longest caption of the batch (EOT included), eot (B,)."""
    length = int(eot.max()) + 1
    return caption_ids[:, :length] if length < caption_ids.shape[1] else caption_ids


def prefix_mask(last: torch.Tensor, length: int) -> torch.Tensor:
    """(B, length) bool, True at positions 0..last[b] of each row; last (B,)."""
    return torch.arange(length, device=last.device)[None, :] <= last[:, None]


class PrefixPacking:
    """The prefixes 0..last[b] of the rows of a (B, N) batch, packed into T = sum(last + 1) rows.

    The flat indices are found once (one device synchronisation); every :meth:`pack` / :meth:`unpack` after
    that is a plain gather / scatter, so a stack of blocks does not synchronise again per layer.
    """

    def __init__(self, last: torch.Tensor, length: int) -> None:
        self.shape = (last.shape[0], length)
        self.index = prefix_mask(last, length).reshape(-1).nonzero().squeeze(1)  # (T,) into the B*N rows

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, ...) -> the kept rows (T, ...), row-major."""
        return x.reshape(self.shape[0] * self.shape[1], *x.shape[2:]).index_select(0, self.index)

    def unpack(self, tokens: torch.Tensor) -> torch.Tensor:
        """(T, ...) -> (B, N, ...), zeros after each prefix."""
        rows = tokens.new_zeros(self.shape[0] * self.shape[1], *tokens.shape[1:]).index_copy(0, self.index, tokens)
        return rows.view(*self.shape, *tokens.shape[1:])


def attention_packed(attn: Attention, tokens: torch.Tensor, packing: PrefixPacking) -> torch.Tensor:
    """``attn``'s causal self-attention on packed prefixes: tokens (T, D) = ``packing.pack(x)`` -> (T, D).

    Projections run on the T packed tokens only; the attention itself runs on the padded (B, N) layout,
    where the zero rows after each prefix sit at later positions and so are never attended by a kept
    query under the causal mask.
    """
    b, n = packing.shape
    qkv = F.linear(tokens, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = (attn._heads(t) for t in packing.unpack(qkv).chunk(3, dim=-1))
    out = attn.kernel(q, k, v, True, None)
    return attn.out_proj(packing.pack(out.transpose(1, 2).reshape(b, n, attn.width)))


def block_packed(block: ResidualAttentionBlock, tokens: torch.Tensor, packing: PrefixPacking) -> torch.Tensor:
    """``block(x, causal=True)`` on packed prefix tokens (T, D) -> (T, D)."""
    x = tokens + attention_packed(block.attn, block.ln_1(tokens), packing)
    return x + block.mlp(block.ln_2(x))


def transformer_packed(transformer: Transformer, tokens: torch.Tensor, packing: PrefixPacking,
                       blocks: list[ResidualAttentionBlock] | None = None) -> torch.Tensor:
    """The causal stack (or ``blocks`` of it) on packed prefix tokens (T, D) -> (T, D): equal to
    ``packing.pack(transformer(x, causal=True))`` for ``tokens = packing.pack(x)``."""
    for block in transformer.resblocks if blocks is None else blocks:
        tokens = block_packed(block, tokens, packing)
    return tokens


def block_at(block: ResidualAttentionBlock, x: torch.Tensor, index: torch.Tensor,
             causal: bool = False) -> torch.Tensor:
    """The block's output at one position per sample: x (B, N, D), index (B,) -> (B, 1, D).

    Equal to ``block(x, causal)[arange(B), index]``: keys and values still come from every position
    (under ``causal`` only from positions <= index), but the query projection, the output projection,
    the residual stream and the MLP run on one token instead of N.
    """
    rows = torch.arange(x.shape[0], device=x.device)
    normed = block.ln_1(x)
    key_mask = prefix_mask(index, x.shape[1]) if causal else None
    x = x[rows, index].unsqueeze(1)
    x = x + block.attn(normed[rows, index].unsqueeze(1), normed, key_mask=key_mask)
    return x + block.mlp(block.ln_2(x))


def transformer_at(transformer: Transformer, x: torch.Tensor, index: torch.Tensor,
                   causal: bool = False) -> torch.Tensor:
    """``transformer(x, causal)[arange(B), index].unsqueeze(1)``: x (B, N, D), index (B,) -> (B, 1, D).

    The last block computes that token alone (:func:`block_at`); under ``causal`` the blocks before it run
    on the packed prefixes (:func:`transformer_packed`): captions cost their own lengths.
    """
    blocks = list(transformer.resblocks)
    if not blocks or recording(transformer):
        return transformer(x, causal=causal)[torch.arange(x.shape[0], device=x.device), index].unsqueeze(1)
    *body, last = blocks
    if causal and body and not torch.compiler.is_compiling():
        packing = PrefixPacking(index, x.shape[1])
        x = packing.unpack(transformer_packed(transformer, packing.pack(x), packing, blocks=body))
    else:
        for block in body:
            x = block(x, causal=causal)
    return block_at(last, x, index, causal=causal)


def image_global_token(visual: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """``visual(images)[:, :1]``, the CLS token (B, 1, E), with the last block computed for it alone."""
    x = visual.embed(images)
    x = transformer_at(visual.transformer, x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
    return visual.ln_post(x) @ visual.proj.to(x.dtype)


def text_global_token(clip: CLIP, text: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``clip.encode_text(text)`` at ``index`` (B,) (the EOT positions): (B, 1, E), computing only its prefix."""
    x = transformer_at(clip.transformer, clip.embed_text(text), index, causal=True)
    return clip.ln_final(x) @ clip.text_projection.to(x.dtype)


def text_tokens_packed(clip: CLIP, text: torch.Tensor, prefix_end: torch.Tensor) -> torch.Tensor:
    """``clip.encode_text(text)`` (B, L, E) at positions 0..prefix_end[b], zeros after (for readers that mask
    them anyway); each caption costs its own length."""
    if recording(clip.transformer) or torch.compiler.is_compiling():
        return clip.encode_text(text)
    x = clip.embed_text(text)
    packing = PrefixPacking(prefix_end, x.shape[1])
    packed = transformer_packed(clip.transformer, packing.pack(x), packing)
    return packing.unpack(clip.ln_final(packed) @ clip.text_projection.to(x.dtype))
