"""A benchmark-only model that runs one training step the way the IRRA reference does (perf.json config S).

``../shared/reference/perf.json`` was measured with the reference code on another CPU; to compare our
library's step time with a reference-*style* step in the same process (same machine, same load), this module
rebuilds the reference's execution structure and cost, written anew in this project's style:

* ``model/clip_model.py`` (OpenAI's CLIP as IRRA adapts it): **sequence-first** activations (N, B, D)
  through ``nn.MultiheadAttention`` blocks called with ``need_weights=False``; the text tower's attention
  takes an additive **float** causal mask (-inf above the diagonal) of the whole context and always runs
  at the **full context** (77 tokens at config S: no trimming of the padding); a LayerNorm subclass that
  computes in float32 and casts back; the QuickGELU MLP ``c_fc -> QuickGELU -> c_proj``; the image tower's
  ``conv1`` patches, class token, positional embedding, ``ln_pre``, transformer, then ``ln_post`` and
  ``proj`` applied to *every* token (as IRRA does), the CLS token being kept afterwards.
* ``model/build.py`` (``IRRA.forward``): global features = image token 0 and the text token at
  ``argmax(ids)``, as float32; the contrastive losses with a constant logit scale ``1 / temperature``. The
  losses are :func:`irra_core.losses.compute_sdm` / :func:`~irra_core.losses.compute_itc`, so their cost
  is identical to ours and any difference in step time comes from the towers and the optimiser.
* ``solver/build.py`` (``build_optimizer``): **one param group per parameter** (the reference loops over
  ``named_parameters``), IRRA's lr / weight-decay rules, ``Adam`` with ``eps = 1e-3`` (``AdamW`` 1e-8,
  ``SGD`` with momentum), and torch's default single-tensor for-loop kernel (``foreach=False,
  fused=False``).

Parameter names are those of :class:`irra_core.model.clip.CLIP` (OpenAI's layout), so state dicts load both
ways and the two models can be checked to compute the same features (``tests/test_reference_style.py``).

Deliberately *not* reproduced: data loading and augmentation, logging/meters, the learning-rate scheduler
(constant lr per step is all a step-time benchmark needs), checkpointing, evaluation, IRRA's fp16 weight
conversion (``convert_weights``; perf.json's CPU rows are fp32), and the ``mlm``/``id`` heads (config S
trains ``sdm+itc`` only). The building blocks are defined here rather than imported from
:mod:`irra_core.model.clip` on purpose: optimising the library must not speed up its own baseline.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from irra_core import losses
from irra_core.config import Config
from irra_core.model.clip import init_transformer_like_clip
from irra_core.optim import param_lr_and_weight_decay

__all__ = ["ReferenceStyleCLIP", "build_reference_style", "SUPPORTED_LOSSES"]

#: the objectives of perf.json's config S; anything else (mlm, id, ...) is outside this baseline
SUPPORTED_LOSSES = ("sdm", "itc")


class LayerNorm(nn.LayerNorm):
    """The reference's fp16-safe LayerNorm: cast the input to float32, normalise, cast back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x) as two separate element-wise kernels, like the reference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block on sequence-first tensors: x + attn(ln_1(x)), then x + mlp(ln_2(x)).

    Args:
        width: model width D.
        heads: attention heads.
        attn_mask: additive float mask (N, N) (0 / -inf) or None for full attention.
    """

    def __init__(self, width: int, heads: int, attn_mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)  # batch_first=False: (N, B, D), as OpenAI wrote it
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = LayerNorm(width)
        # a non-persistent buffer: follows .to(device) but stays out of the state dict (as in the reference,
        # where it is a plain attribute), so the parameter layout matches irra_core's CLIP exactly
        self.register_buffer("attn_mask", attn_mask, persistent=False)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, B, D) -> (N, B, D); the mask is cast to the activations' dtype on every call, as upstream."""
        mask = None if self.attn_mask is None else self.attn_mask.to(dtype=x.dtype, device=x.device)
        return self.attn(x, x, x, need_weights=False, attn_mask=mask)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, B, D) -> (N, B, D)."""
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """``layers`` blocks in an ``nn.Sequential`` named ``resblocks``; every block shares one mask."""

    def __init__(self, width: int, layers: int, heads: int, attn_mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, B, D) -> (N, B, D)."""
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """The reference's ViT on (H, W) images with patch stride ``stride_size``."""

    def __init__(self, image_size: tuple[int, int], patch_size: int, stride_size: int, width: int,
                 layers: int, heads: int, output_dim: int) -> None:
        super().__init__()
        rows = (image_size[0] - patch_size) // stride_size + 1
        cols = (image_size[1] - patch_size) // stride_size + 1
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=stride_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(rows * cols + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> all tokens (B, 1 + P, E), CLS first."""
        x = self.conv1(images)  # (B, W, rows, cols)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, P, W)
        # the reference broadcasts the class token by adding it to a fresh zeros tensor
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype,
                                                             device=x.device)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, 1 + P, W)
        x = self.ln_pre(x)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # through (1 + P, B, W) and back
        return self.ln_post(x) @ self.proj  # ln_post and proj on every token, not only CLS


def causal_float_mask(length: int) -> torch.Tensor:
    """(L, L) additive mask: 0 on and below the diagonal, -inf above (a token sees itself and the past)."""
    return torch.full((length, length), float("-inf")).triu_(1)


class ReferenceStyleCLIP(nn.Module):
    """CLIP towers + IRRA's sdm/itc objective, executed like the IRRA reference (see the module docstring).

    Args:
        cfg: sizes from ``cfg.model`` (widths, layers, heads, patch/stride, embed_dim, vocab, temperature),
            ``cfg.data`` (``img_size``, ``text_length`` = the context) and ``cfg.loss`` (names, weights).

    Raises:
        ValueError: ``cfg.loss.names`` asks for an objective other than sdm/itc, the precision is
            ``legacy_fp16`` (IRRA's fp16 conversion is not reproduced), or ``model.conv_stem`` /
            ``model.text_conv`` is on (the reference's towers have neither).
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        m = cfg.model
        names = cfg.loss_names()
        unsupported = [n for n in names if n not in SUPPORTED_LOSSES]
        if unsupported:
            raise ValueError(f"the reference-style baseline reproduces config S ({'+'.join(SUPPORTED_LOSSES)}); "
                             f"loss.names asks also for {unsupported}")
        if m.precision == "legacy_fp16":
            raise ValueError("IRRA's fp16 weight conversion is not reproduced; use fp32 (or autocast around it)")
        if m.conv_stem or m.text_conv:
            raise ValueError("the reference's towers have neither the cpu presets' conv stem nor their token "
                             "convolution; set model.conv_stem=false and model.text_conv=0 (as config S does)")
        self.cfg = cfg
        self.loss_names = names
        self.logit_scale = 1.0 / m.temperature  # a constant, as in IRRA
        self.context_length = cfg.data.text_length
        self.visual = VisionTransformer(tuple(cfg.data.img_size), m.patch_size, m.stride_size, m.vision_width,
                                        m.vision_layers, m.vision_heads, m.embed_dim)
        self.transformer = Transformer(m.text_width, m.text_layers, m.text_heads,
                                       attn_mask=causal_float_mask(self.context_length))
        self.token_embedding = nn.Embedding(m.vocab_size, m.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(self.context_length, m.text_width))
        self.ln_final = LayerNorm(m.text_width)
        self.text_projection = nn.Parameter(torch.empty(m.text_width, m.embed_dim))
        self._init_text_tower()

    def _init_text_tower(self) -> None:
        # OpenAI's initialize_parameters (the image tower keeps its constructor's init, as upstream); the
        # library's block rule works here too (nn.MultiheadAttention has the same parameter names) and the
        # initialisation is no part of the step being timed
        width, layers = self.transformer.width, self.transformer.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        init_transformer_like_clip(self.transformer, width, layers)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> all image tokens (B, 1 + P, E)."""
        return self.visual(images.to(self.dtype))

    def encode_text(self, caption_ids: torch.Tensor) -> torch.Tensor:
        """caption ids (B, L) with L = the full context -> all text tokens (B, L, E).

        Raises:
            ValueError: L differs from the context length (the reference adds the whole positional table,
                so captions must be padded to it).
        """
        if caption_ids.shape[1] != self.context_length:
            raise ValueError(f"captions of {caption_ids.shape[1]} tokens: the reference-style text tower runs "
                             f"at the full context of {self.context_length} (pad them)")
        x = self.token_embedding(caption_ids).to(self.dtype) + self.positional_embedding.to(self.dtype)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # through (L, B, W) and back
        return self.ln_final(x).to(self.dtype) @ self.text_projection

    def global_features(self, images: torch.Tensor, caption_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (B, 3, H, W), caption ids (B, L)) -> (image CLS (B, E), text EOT token (B, E)), float32."""
        image_tokens = self.encode_image(images)
        text_tokens = self.encode_text(caption_ids)
        image_feats = image_tokens[:, 0, :].float()
        rows = torch.arange(text_tokens.shape[0], device=text_tokens.device)
        text_feats = text_tokens[rows, caption_ids.argmax(dim=-1)].float()  # EOT (the largest id)
        return image_feats, text_feats

    def forward(self, batch: dict) -> dict:
        """``images`` (B, 3, H, W), ``caption_ids`` (B, L), ``pids`` (B,) -> ``{name}_loss`` (weighted scalars)
        for sdm/itc in ``cfg.loss.names``, as IRRA's forward returns them (the terms of our ``total_loss``)."""
        image_feats, text_feats = self.global_features(batch["images"], batch["caption_ids"])
        weights, scale = self.cfg.loss.weights, self.logit_scale
        ret: dict = {}
        if "itc" in self.loss_names:
            ret["itc_loss"] = losses.compute_itc(image_feats, text_feats, scale) * weights["itc"]
        if "sdm" in self.loss_names:
            ret["sdm_loss"] = losses.compute_sdm(image_feats, text_feats, batch["pids"], scale) * weights["sdm"]
        return ret


def build_reference_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """IRRA's ``build_optimizer``: one group per trainable parameter, IRRA's lr/decay rules, for-loop kernel.

    Per-parameter groups are mathematically the same as our merged groups, but they are what the reference
    executes (one single-tensor update per parameter), so they are part of the cost being reproduced.
    """
    optim = cfg.optim
    groups = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr, weight_decay = param_lr_and_weight_decay(name, optim)
        groups.append({"params": [param], "lr": lr, "weight_decay": weight_decay})
    betas = (optim.alpha, optim.beta)
    kernel = {"foreach": False, "fused": False}  # torch's default on CPU, spelled out: no multi-tensor path
    if optim.optimizer == "Adam":
        return torch.optim.Adam(groups, lr=optim.lr, betas=betas, eps=1e-3, **kernel)  # IRRA hard-codes 1e-3
    if optim.optimizer == "AdamW":
        return torch.optim.AdamW(groups, lr=optim.lr, betas=betas, eps=1e-8, **kernel)
    if optim.optimizer == "SGD":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, foreach=False)
    raise ValueError(f"optim.optimizer = {optim.optimizer!r}; IRRA offers Adam, AdamW and SGD")


def build_reference_style(cfg: Config) -> tuple[ReferenceStyleCLIP, torch.optim.Optimizer]:
    """A :class:`ReferenceStyleCLIP` in training mode (float32, CPU) and its IRRA-style optimiser.

    ``model.to(device)`` afterwards is fine before the first step: it moves the parameters in place, so the
    optimiser keeps referring to them.
    """
    model = ReferenceStyleCLIP(cfg)
    model.train()
    return model, build_reference_optimizer(model, cfg)
