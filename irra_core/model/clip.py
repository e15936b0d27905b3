"""CLIP's two towers with OpenAI's state-dict layout, IRRA's non-square input and overlapping patches.

The parameter names are those of ``openai/CLIP/clip/model.py`` (``visual.conv1.weight``,
``visual.transformer.resblocks.N.attn.in_proj_weight``, ``token_embedding.weight``, ``ln_final``,
``text_projection`` ...), which is also the layout under ``base_model.`` in IRRA and PHP checkpoints, so
all three load without renaming. The maths is written anew (SPEC §1.9):

* image tower: ``conv1`` (kernel ``patch_size``, stride ``stride_size``) -> CLS + patches + positional
  embedding -> ``ln_pre`` -> transformer -> ``ln_post`` -> ``@ proj``, *all* tokens returned;
* text tower: token + positional embedding -> causal transformer -> ``ln_final`` -> ``@ text_projection``,
  all tokens returned; the global text feature is the token at ``argmax(ids)`` (the EOT id is the largest).

Tensors are batch-first inside (OpenAI CLIP permutes to sequence-first; the state dict does not care)
and attention goes through :func:`attend` (SDPA, or an explicit softmax for short sequences on the CPU,
whichever is faster there). Every attention module can record its probabilities for visualisation
(:mod:`irra_core.model.capture`); when nothing records, the only cost is one ``is None`` test per call.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LayerNorm", "QuickGELU", "Attention", "ResidualAttentionBlock", "Transformer", "VisionTransformer",
    "CLIP", "CLIPConfig", "clip_config_from_state_dict", "initialize_clip_parameters",
    "interpolate_positional_embedding", "patch_grid",
]


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back to the input dtype (CLIP's fp16-safe subclass)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape,
                           None if self.weight is None else self.weight.float(),
                           None if self.bias is None else self.bias.float(), self.eps)
        return out.to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the GELU approximation OpenAI CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # = x * sigmoid(1.702 x) (to ~5e-7); silu's fused kernels make forward + backward ~17% faster on the CPU
        return F.silu(1.702 * x) * (1 / 1.702)


#: a recorder receives the attention probabilities (B, heads, Nq, Nk) of one call
Recorder = Callable[[torch.Tensor], None]

#: On the CPU an explicit softmax(q k^T / sqrt(d)) v beats the fused SDPA kernel for short sequences (forward +
#: backward, 2 threads: 7.8 vs 11.4 ms at batch 32, 4 heads, 49 tokens; 8.5 vs 10.5 ms at 77 causal tokens)
#: and loses from ~128 keys on (59.7 vs 45.1 ms at 193 tokens, ViT-B/16 at 384x128). GPUs always use SDPA.
CPU_EXPLICIT_ATTENTION_MAX_KEYS = 128


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + masks) v: q (B, h, Nq, d), k/v (B, h, Nk, d) -> (B, h, Nq, d).

    ``mask`` (broadcastable to (B, h, Nq, Nk)) bool, True = may attend; ``causal`` hides later positions.
    Dispatches to the faster kernel for the device and length (see ``CPU_EXPLICIT_ATTENTION_MAX_KEYS``).
    """
    if q.device.type != "cpu" or k.shape[-2] > CPU_EXPLICIT_ATTENTION_MAX_KEYS:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    return attention_probs(q, k, causal, mask).to(v.dtype) @ v


def attention_probs(q: torch.Tensor, k: torch.Tensor, causal: bool = False,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + masks): q (B, h, Nq, d), k (B, h, Nk, d) -> (B, h, Nq, Nk); masks as in
    :func:`attend` (a causal query i sees keys 0..i)."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if causal:
        nq, nk = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(nq, nk, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1)


class Attention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameter names, batch-first, via :func:`attend`.

    Parameters ``in_proj_weight`` (3D, D), ``in_proj_bias`` (3D,) and ``out_proj`` (Linear D->D) keep the
    names found in CLIP/IRRA/PHP checkpoints (and matched by IRRA's fp16 conversion and lr rules).
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if heads < 1 or width % heads:
            raise ValueError(f"attention width {width} is not divisible by {heads} heads")
        self.width, self.heads = width, heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        # PyTorch's MultiheadAttention defaults (used by PHP's EFP blocks, which keep the default init)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)
        #: set by :func:`irra_core.model.capture.capture_attention`; None = no capture (the fast path)
        self.recorder: Recorder | None = None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.width // self.heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor | None = None, *,
                causal: bool = False, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from ``query`` (B, Nq, D) over ``key_value`` (B, Nk, D) (itself when None) -> (B, Nq, D).

        ``key_mask`` (B, Nk) bool, True = may be attended, restricts the keys per sample (used instead of
        ``causal`` when a single query position per sample is computed).
        """
        weight, bias = self.in_proj_weight, self.in_proj_bias
        if key_value is None:
            q, k, v = F.linear(query, weight, bias).chunk(3, dim=-1)
        else:
            d = self.width
            q = F.linear(query, weight[:d], bias[:d])
            k, v = F.linear(key_value, weight[d:], bias[d:]).chunk(2, dim=-1)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        if self.recorder is None:
            out = attend(q, k, v, causal, mask)
        else:
            out = self._attend_and_record(q, k, v, causal, mask)
        b, _, nq, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, self.width))

    def forward_packed(self, tokens: torch.Tensor, packing: PrefixPacking) -> torch.Tensor:
        """Causal self-attention over packed prefixes: tokens (T, D) = ``packing.pack(x)`` -> (T, D).

        Projections run on the T packed tokens only; the attention itself runs on the padded (B, N) layout,
        where the zero rows after each prefix sit at later positions and so are never attended by a kept
        query under the causal mask.
        """
        b, n = packing.shape
        qkv = F.linear(tokens, self.in_proj_weight, self.in_proj_bias)
        q, k, v = (self._heads(t) for t in packing.unpack(qkv).chunk(3, dim=-1))
        out = attend(q, k, v, causal=True)
        return self.out_proj(packing.pack(out.transpose(1, 2).reshape(b, n, self.width)))

    def _attend_and_record(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                           mask: torch.Tensor | None = None) -> torch.Tensor:
        # explicit softmax (in float32) so the probabilities exist; same maths as the fast path
        probs = attention_probs(q.float(), k.float(), causal, mask)
        self.recorder(probs)
        return (probs @ v.float()).to(v.dtype)


def clip_mlp(width: int) -> nn.Sequential:
    """CLIP's block MLP, (..., D) -> (..., D): c_fc (D -> 4D) -> QuickGELU -> c_proj; names match OpenAI's keys."""
    return nn.Sequential(OrderedDict([
        ("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(width * 4, width))]))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); mlp = c_fc -> QuickGELU -> c_proj."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = Attention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = clip_mlp(width)
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """x (B, N, D) -> (B, N, D)."""
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))

    def forward_packed(self, tokens: torch.Tensor, packing: PrefixPacking) -> torch.Tensor:
        """The causal block on packed prefix tokens (T, D) (see :class:`PrefixPacking`) -> (T, D)."""
        x = tokens + self.attn.forward_packed(self.ln_1(tokens), packing)
        return x + self.mlp(self.ln_2(x))

    def forward_at(self, x: torch.Tensor, index: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """The block's output at one position per sample: x (B, N, D), index (B,) -> (B, 1, D).

        Equal to ``forward(x, causal)[arange(B), index]``: keys and values still come from every position
        (under ``causal`` only from positions <= index), but the query projection, the output projection,
        the residual stream and the MLP run on one token instead of N.
        """
        rows = torch.arange(x.shape[0], device=x.device)
        normed = self.ln_1(x)
        key_mask = prefix_mask(index, x.shape[1]) if causal else None
        x = x[rows, index].unsqueeze(1)
        x = x + self.attn(normed[rows, index].unsqueeze(1), normed, key_mask=key_mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of :class:`ResidualAttentionBlock` under the key ``resblocks``."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.width, self.layers, self.heads = width, layers, heads
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor, causal: bool = False,
                output_index: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D) -> (B, N, D); ``causal`` masks attention to later positions (CLIP's text tower).

        With ``output_index`` (B,) only the token at that position of each sample is returned, (B, 1, D),
        and the work shrinks to what that token depends on:

        * the last block computes just that token (:meth:`ResidualAttentionBlock.forward_at`): ~20% fewer
          FLOPs for a 4-layer tower;
        * under ``causal``, positions after ``output_index`` cannot influence it, so the blocks before the
          last run on the packed prefixes (:meth:`ResidualAttentionBlock.forward_packed`): captions of a
          batch cost their own lengths, not the longest one's.

        While any attention is being recorded, every position is computed so the maps stay complete.
        """
        if output_index is None:
            for block in self.resblocks:
                x = block(x, causal=causal)
            return x
        blocks = list(self.resblocks)
        if not blocks or self.recording:
            return self.forward(x, causal)[torch.arange(x.shape[0], device=x.device), output_index].unsqueeze(1)
        *body, last = blocks
        # packing selects with a data-dependent mask, which torch.compile cannot trace: padded there
        if causal and body and not torch.compiler.is_compiling():
            packing = PrefixPacking(output_index, x.shape[1])
            x = packing.unpack(self.forward_packed(packing.pack(x), packing, blocks=body))
        else:
            for block in body:
                x = block(x, causal=causal)
        return last.forward_at(x, output_index, causal=causal)

    @property
    def recording(self) -> bool:
        """True while any block's attention is being recorded (then every position must be computed)."""
        return any(block.attn.recorder is not None for block in self.resblocks)

    def forward_packed(self, tokens: torch.Tensor, packing: PrefixPacking,
                       blocks: list[ResidualAttentionBlock] | None = None) -> torch.Tensor:
        """The causal stack (or ``blocks`` of it) on packed prefix tokens: tokens (T, D) -> (T, D).

        Equal to ``packing.pack(forward(x, causal=True))`` for ``tokens = packing.pack(x)``, without computing
        what follows each prefix.
        """
        for block in self.resblocks if blocks is None else blocks:
            tokens = block.forward_packed(tokens, packing)
        return tokens


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


def patch_grid(image_size: tuple[int, int], patch_size: int, stride_size: int) -> tuple[int, int]:
    """(rows, cols) of patches IRRA gets from an (H, W) image: ((H - p) // s + 1, (W - p) // s + 1)."""
    h, w = image_size
    if h < patch_size or w < patch_size:
        raise ValueError(f"image size {(h, w)} is smaller than the patch size {patch_size}")
    return (h - patch_size) // stride_size + 1, (w - patch_size) // stride_size + 1


def conv_stem(patch_size: int, stride_size: int, width: int) -> nn.Sequential:
    """A convolutional stem (Xiao et al. 2021, "Early Convolutions Help Transformers See Better"): 3x3
    stride-2 conv + BatchNorm + ReLU blocks, channels doubling up to ``width // 2``, until the image is
    ``patch_size`` times smaller; ``conv1`` (1x1, to ``width``) follows it. Images (B, 3, H, W) ->
    (B, width // 2, H / p, W / p) with padding 1, so the grid is ``ceil(H / p) x ceil(W / p)``, the
    patch grid's for sizes divisible by ``p``.

    A deviation from ViT-B/16 for from-scratch training on a CPU (``model.conv_stem``; off in the paper
    presets): the 16x16 patchify conv learns slowly without pretraining.

    Raises:
        ValueError: ``stride_size != patch_size`` or ``patch_size`` not a power of two.
    """
    if stride_size != patch_size or patch_size < 2 or patch_size & (patch_size - 1):
        raise ValueError(f"model.conv_stem needs stride_size == patch_size and a power-of-two patch size, got "
                         f"patch_size={patch_size}, stride_size={stride_size}")
    stages = patch_size.bit_length() - 1
    channels = [3] + [max(8, (width // 2) >> (stages - 1 - i)) for i in range(stages)]
    blocks: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        blocks += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*blocks)


class VisionTransformer(nn.Module):
    """CLIP's ViT on (H, W) images with IRRA's (possibly overlapping) patch stride; with ``stem=True`` a
    convolutional stem (:func:`conv_stem`) replaces the patchify conv (``conv1`` is then its 1x1 head)."""

    def __init__(self, image_size: tuple[int, int], patch_size: int, stride_size: int, width: int,
                 layers: int, heads: int, output_dim: int, stem: bool = False) -> None:
        super().__init__()
        self.image_size = tuple(image_size)
        self.grid = patch_grid(self.image_size, patch_size, stride_size)
        if stem:
            self.stem = conv_stem(patch_size, stride_size, width)
            self.conv1 = nn.Conv2d(self.stem[-3].out_channels, width, kernel_size=1, bias=False)
        else:
            self.stem = None
            self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=stride_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(1 + self.grid[0] * self.grid[1], width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, images: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        """images (B, 3, H, W) -> tokens (B, 1 + rows*cols, output_dim), CLS first, after ln_post @ proj;
        with ``cls_only`` just the CLS token (B, 1, output_dim), its last block computed alone."""
        dtype = self.conv1.weight.dtype
        # the residual stream stays in the weights' dtype (fp32, or fp16 under legacy_fp16) even when the conv
        # runs under autocast, so additions promote bf16/fp16 sub-layer outputs back to fp32
        x = images.to(dtype)
        if self.stem is not None:
            x = self.stem(x)
        x = self.conv1(x).to(dtype)  # (B, width, rows, cols)
        if tuple(x.shape[-2:]) != self.grid:
            raise ValueError(f"images of size {tuple(images.shape[-2:])} give a {tuple(x.shape[-2:])} patch grid; "
                             f"this model was built for {self.image_size} (grid {self.grid})")
        x = x.flatten(2).transpose(1, 2)  # (B, P, width), row-major like CLIP's reshape
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        cls_index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if cls_only else None
        x = self.transformer(self.ln_pre(x), output_index=cls_index)
        return self.ln_post(x) @ self.proj.to(x.dtype)


@dataclass(frozen=True)
class CLIPConfig:
    """Hyper-parameters of the two towers (OpenAI ``build_model`` names, plus IRRA's stride)."""

    embed_dim: int
    image_resolution: tuple[int, int]
    vision_layers: int
    vision_width: int
    vision_patch_size: int
    stride_size: int
    context_length: int
    vocab_size: int
    transformer_width: int
    transformer_heads: int
    transformer_layers: int
    vision_heads: int
    vision_stem: bool = False  # a convolutional stem instead of the patchify conv (model.conv_stem)

    def to_dict(self) -> dict:
        return asdict(self)


class CLIP(nn.Module):
    """Image and text towers of CLIP, token-level outputs (IRRA's ``base_model``)."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.context_length = config.context_length
        self.visual = VisionTransformer(config.image_resolution, config.vision_patch_size, config.stride_size,
                                        config.vision_width, config.vision_layers, config.vision_heads,
                                        config.embed_dim, stem=config.vision_stem)
        width = config.transformer_width
        self.transformer = Transformer(width, config.transformer_layers, config.transformer_heads)
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, width))
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, config.embed_dim))
        initialize_clip_parameters(self)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, images: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        """images (B, 3, H, W) -> all image tokens (B, 1 + P, E) (CLS first), or only CLS (B, 1, E)."""
        return self.visual(images, cls_only=cls_only)

    def encode_text(self, text: torch.Tensor, output_index: torch.Tensor | None = None,
                    prefix_end: torch.Tensor | None = None) -> torch.Tensor:
        """token ids (B, L), L <= context_length -> all text tokens (B, L, E) after ln_final @ text_projection.

        With ``output_index`` (B,) (usually the EOT positions) only the token there, (B, 1, E). With
        ``prefix_end`` (B,) only positions 0..prefix_end[b] are computed (packed, so each caption costs its own
        length) and the positions after it come back as zeros: for readers that mask them anyway.
        """
        length = text.shape[1]
        if length > self.context_length:
            raise ValueError(f"captions of {length} tokens exceed the text tower's context length "
                             f"{self.context_length}")
        dtype = self.dtype
        x = self.token_embedding(text).to(dtype) + self.positional_embedding[:length].to(dtype)
        # the causal mask makes position i independent of later (padding) positions, so slicing the
        # positional table to L changes nothing for captions padded to any length >= L
        if (prefix_end is not None and output_index is None and not self.transformer.recording
                and not torch.compiler.is_compiling()):
            packing = PrefixPacking(prefix_end, length)
            packed = self.transformer.forward_packed(packing.pack(x), packing)
            return packing.unpack(self.ln_final(packed) @ self.text_projection.to(x.dtype))
        x = self.transformer(x, causal=True, output_index=output_index)
        return self.ln_final(x) @ self.text_projection.to(x.dtype)

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(text)


def initialize_clip_parameters(model: CLIP) -> None:
    """OpenAI CLIP's ``initialize_parameters`` (for training from scratch).

    Token embedding N(0, 0.02), text positional embedding N(0, 0.01); text blocks: attention in-proj
    N(0, w^-1/2), out-proj and ``c_proj`` N(0, w^-1/2 (2 L)^-1/2), ``c_fc`` N(0, (2 w)^-1/2);
    ``text_projection`` N(0, w^-1/2). The image tower keeps the initialisation CLIP's ``VisionTransformer``
    constructor gives it (class/positional embedding and ``proj`` w^-1/2 N(0, 1), PyTorch defaults for
    the blocks, as ``nn.MultiheadAttention``: Xavier in-proj, zero biases).
    """
    nn.init.normal_(model.token_embedding.weight, std=0.02)
    nn.init.normal_(model.positional_embedding, std=0.01)
    width, layers = model.transformer.width, model.transformer.layers
    init_transformer_like_clip(model.transformer, width, layers)
    nn.init.normal_(model.text_projection, std=width ** -0.5)


def init_transformer_like_clip(transformer: Transformer, width: int, layers: int) -> None:
    """CLIP's std rule for a stack of blocks (also IRRA's rule for its cross-modal transformer)."""
    attn_std = width ** -0.5
    proj_std = width ** -0.5 * (2 * layers) ** -0.5
    fc_std = (2 * width) ** -0.5
    for block in transformer.resblocks:
        nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


_BLOCK_KEY = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$")


def clip_config_from_state_dict(state_dict: Mapping[str, torch.Tensor], *, image_resolution: tuple[int, int],
                                stride_size: int, vision_heads: int | None = None,
                                transformer_heads: int | None = None) -> CLIPConfig:
    """Infer every tower hyper-parameter from a CLIP state dict (keys without ``base_model.``).

    Widths come from ``visual.conv1.weight`` and ``ln_final.weight``, the embedding dimension from
    ``text_projection``, the patch size from the conv kernel, layer counts from the block keys, the
    context length and vocabulary from the embeddings. Head counts are not stored in a state dict; like
    OpenAI's ``build_model`` (and IRRA) they default to ``width // 64``.

    Raises:
        KeyError: a required key is missing (the message lists what was found).
    """
    required = ("visual.conv1.weight", "ln_final.weight", "text_projection", "positional_embedding",
                "token_embedding.weight")
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise KeyError(f"not a CLIP state dict: missing {missing}; first keys found: {list(state_dict)[:8]}")
    vision_width = state_dict["visual.conv1.weight"].shape[0]
    text_width = state_dict["ln_final.weight"].shape[0]
    layers = {"visual": set(), "text": set()}
    for key in state_dict:
        match = _BLOCK_KEY.match(key)
        if match:
            layers["visual" if match.group(1) else "text"].add(int(match.group(2)))
    return CLIPConfig(
        embed_dim=state_dict["text_projection"].shape[1],
        image_resolution=tuple(int(v) for v in image_resolution),
        vision_layers=len(layers["visual"]),
        vision_width=vision_width,
        vision_patch_size=state_dict["visual.conv1.weight"].shape[-1],
        stride_size=int(stride_size),
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        transformer_width=text_width,
        transformer_heads=transformer_heads or max(1, text_width // 64),
        transformer_layers=len(layers["text"]),
        vision_heads=vision_heads or max(1, vision_width // 64),
    )


def interpolate_positional_embedding(posemb: torch.Tensor, grid: tuple[int, int],
                                     old_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Resize a ViT positional embedding (1 + P_old, D) to ``grid`` (IRRA's ``resize_pos_embed``).

    The CLS row is kept; the patch rows, laid out on ``old_grid`` (a square when not given, as in
    OpenAI's checkpoints), are resized with bilinear interpolation (``align_corners=False``).
    """
    cls, patches = posemb[:1], posemb[1:]
    if old_grid is None:
        side = math.isqrt(patches.shape[0])
        if side * side != patches.shape[0]:
            raise ValueError(f"cannot infer the patch grid of a positional embedding with {patches.shape[0]} "
                             f"patch rows (not a square); pass old_grid")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(grid):
        return posemb
    dtype = posemb.dtype
    image = patches.float().reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=tuple(grid), mode="bilinear", align_corners=False)
    patches = image.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
    return torch.cat([cls.float(), patches], dim=0).to(dtype)
