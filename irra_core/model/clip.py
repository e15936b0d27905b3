"""CLIP's two towers with OpenAI's state-dict layout, IRRA's non-square input and overlapping patches.

Parameter names are those of ``openai/CLIP/clip/model.py`` (``visual.conv1.weight``, ``ln_final``, ...), also
the layout under ``base_model.`` in IRRA and PHP checkpoints. The maths is written anew (SPEC §1.9):

* image tower: ``conv1`` (kernel ``patch_size``, stride ``stride_size``) -> CLS + patches + positional
  embedding -> ``ln_pre`` -> transformer -> ``ln_post`` -> ``@ proj``, *all* tokens returned;
* text tower: token + positional embedding -> causal transformer -> ``ln_final`` -> ``@ text_projection``,
  all tokens returned; the global text feature is the token at ``argmax(ids)`` (the EOT id is the largest).

Tensors are batch-first inside (OpenAI CLIP permutes to sequence-first; the state dict does not care).
Attention runs ``Attention.kernel`` (SDPA here; :mod:`irra_core.model.fast` swaps in a faster CPU kernel and
holds the paths that compute only the global tokens). Every attention module can record its probabilities
for visualisation (:mod:`irra_core.model.capture`); when nothing records, the cost is one ``is None`` test.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from irra_core.model.stem import CausalTokenConv, patch_embedding, patch_grid

__all__ = ["LayerNorm", "QuickGELU", "Attention", "ResidualAttentionBlock", "Transformer", "VisionTransformer",
           "CLIP", "CLIPConfig", "initialize_clip_parameters", "patch_grid", "sdpa", "attention_probs"]


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
#: an attention kernel: (q (B, h, Nq, d), k, v (B, h, Nk, d), causal, mask) -> (B, h, Nq, d)
Kernel = Callable[..., torch.Tensor]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
         mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + masks) v (PyTorch's fused kernel): q (B, h, Nq, d), k/v (B, h, Nk, d) -> like q.
    ``mask`` (broadcastable to (B, h, Nq, Nk)) bool, True = may attend; ``causal`` hides later positions."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


def attention_probs(q: torch.Tensor, k: torch.Tensor, causal: bool = False,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + masks): q (B, h, Nq, d), k (B, h, Nk, d) -> (B, h, Nq, Nk); masks as in
    :func:`sdpa` (a causal query i sees keys 0..i)."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if causal:
        nq, nk = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(nq, nk, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1)


class Attention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameter names, batch-first.

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
        #: the attention maths; :func:`irra_core.model.fast.use_fast_attention` may choose another kernel
        self.kernel: Kernel = sdpa
        #: set by :func:`irra_core.model.capture.capture_attention`; None = no capture (the fast path)
        self.recorder: Recorder | None = None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.width // self.heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor | None = None, *,
                causal: bool = False, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from ``query`` (B, Nq, D) over ``key_value`` (B, Nk, D) (itself when None) -> (B, Nq, D).

        ``key_mask`` (B, Nk) bool, True = may be attended, restricts the keys per sample.
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
            out = self.kernel(q, k, v, causal, mask)
        else:
            out = self._attend_and_record(q, k, v, causal, mask)
        b, _, nq, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, self.width))

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


class Transformer(nn.Module):
    """A stack of :class:`ResidualAttentionBlock` under the key ``resblocks``."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.width, self.layers, self.heads = width, layers, heads
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """x (B, N, D) -> (B, N, D); ``causal`` masks attention to later positions (CLIP's text tower)."""
        for block in self.resblocks:
            x = block(x, causal=causal)
        return x


class VisionTransformer(nn.Module):
    """CLIP's ViT on (H, W) images with IRRA's (possibly overlapping) patch stride (``stem``: see
    :func:`irra_core.model.stem.patch_embedding`)."""

    def __init__(self, image_size: tuple[int, int], patch_size: int, stride_size: int, width: int,
                 layers: int, heads: int, output_dim: int, stem: bool = False) -> None:
        super().__init__()
        self.image_size = tuple(image_size)
        self.grid = patch_grid(self.image_size, patch_size, stride_size)
        # CLIP's patchify conv; with model.conv_stem (a CPU-training deviation) conv blocks, then a 1x1 conv1
        self.stem, self.conv1 = patch_embedding(patch_size, stride_size, width, stem=stem)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(1 + self.grid[0] * self.grid[1], width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> the transformer's input (B, 1 + rows*cols, width): CLS + patches, ln_pre'd."""
        dtype = self.conv1.weight.dtype
        # the residual stream stays in the weights' dtype (fp32, or fp16 under legacy_fp16) even when the conv
        # runs under autocast, so additions promote bf16/fp16 sub-layer outputs back to fp32
        x = self.conv1(self.stem(images.to(dtype))).to(dtype)  # (B, width, rows, cols); stem: Identity by default
        if tuple(x.shape[-2:]) != self.grid:
            raise ValueError(f"images of size {tuple(images.shape[-2:])} give a {tuple(x.shape[-2:])} patch grid; "
                             f"this model was built for {self.image_size} (grid {self.grid})")
        x = x.flatten(2).transpose(1, 2)  # (B, P, width), row-major like CLIP's reshape
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> tokens (B, 1 + rows*cols, output_dim), CLS first, after ln_post @ proj."""
        x = self.transformer(self.embed(images))
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
    text_conv: int = 0  # a causal token convolution's kernel width before the text blocks (model.text_conv); 0 = off

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
        # a CPU-training deviation (model.text_conv): zero-initialised, so the tower starts as CLIP's
        self.text_conv = CausalTokenConv(width, config.text_conv) if config.text_conv else None

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> all image tokens (B, 1 + P, E), CLS first."""
        return self.visual(images)

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """token ids (B, L), L <= context_length -> token + positional embeddings (B, L, width), the token
        embeddings first through the causal token convolution where the tower has one (``model.text_conv``). (The
        causal mask and the causal convolution keep position i independent of later padding, so slicing the table
        to L changes nothing.)"""
        length = text.shape[1]
        if length > self.context_length:
            raise ValueError(f"captions of {length} tokens exceed the text tower's context length "
                             f"{self.context_length}")
        x = self.token_embedding(text).to(self.dtype)
        if self.text_conv is not None:
            x = self.text_conv(x)
        return x + self.positional_embedding[:length].to(self.dtype)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """token ids (B, L) -> all text tokens (B, L, E) after ln_final @ text_projection."""
        x = self.transformer(self.embed_text(text), causal=True)
        return self.ln_final(x) @ self.text_projection.to(x.dtype)

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(text)


def initialize_clip_parameters(model: CLIP) -> None:
    """OpenAI CLIP's ``initialize_parameters``: token embedding N(0, 0.02), text positional N(0, 0.01), the text
    blocks by :func:`init_transformer_like_clip`, ``text_projection`` N(0, w^-1/2). The image tower keeps its
    constructor's init (embeddings and ``proj`` w^-1/2 N(0, 1); blocks: Xavier in-proj, zero biases)."""
    nn.init.normal_(model.token_embedding.weight, std=0.02)
    nn.init.normal_(model.positional_embedding, std=0.01)
    width, layers = model.transformer.width, model.transformer.layers
    init_transformer_like_clip(model.transformer, width, layers)
    nn.init.normal_(model.text_projection, std=width ** -0.5)


def init_transformer_like_clip(transformer: Transformer, width: int, layers: int) -> None:
    """CLIP's std rule for a stack of blocks (also IRRA's for its cross-modal transformer): in-proj N(0, w^-1/2),
    out-proj and ``c_proj`` N(0, w^-1/2 (2 L)^-1/2), ``c_fc`` N(0, (2 w)^-1/2)."""
    attn_std = width ** -0.5
    proj_std = width ** -0.5 * (2 * layers) ** -0.5
    fc_std = (2 * width) ** -0.5
    for block in transformer.resblocks:
        nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
