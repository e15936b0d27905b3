"""Opt-in recording of attention probabilities and expert routing, for visualisation.

Both are context managers: on entry they set a ``recorder`` on the relevant modules, on exit they
restore the previous value. Outside them the model runs its fast path (fused SDPA attention), and the
only cost is one ``recorder is None`` test per attention call. Inside, attention is computed with an
explicit softmax (same maths) so the probabilities exist. Captured tensors are detached float32 CPU copies.

Names (``att.maps`` keys): ``image`` / ``text`` (tower layers), ``cross`` (IRRA's MLM cross-attention,
text -> image), ``cross_modal`` (its transformer), ``efp`` (PHP's EFP attention), ``crfm_image`` /
``crfm_text`` (PHP's unified-token pooling weights). Each key holds one entry per layer and per call, in
call order: calling ``encode_image`` twice gives two consecutive runs of layers.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from irra_core.model.clip import Attention
from irra_core.model.php import CRFM, LayerRouting, MoEAdapters

__all__ = ["AttentionCapture", "RoutingCapture", "capture_attention", "capture_routing"]

_PREFIXES = (  # module-name prefix (after an optional wrapper prefix) -> map key
    ("base_model.visual.transformer.", "image"), ("base_model.transformer.", "text"),
    ("cross_attn", "cross"), ("cross_modal_transformer.", "cross_modal"), ("efp.", "efp"),
)


@dataclass
class AttentionCapture:
    """``maps[key]``: list of FloatTensor (B, heads, Nq, Nk) (CRFM: (B, cnum, N)); ``meta``: grid, img_size."""

    maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def _add(self, key: str, probs: torch.Tensor) -> None:
        self.maps.setdefault(key, []).append(probs.detach().float().cpu())


@dataclass
class RoutingCapture:
    """``records``: one dict per EFP layer call: modality, layer, gate_logits (B, T, E), topk (B, T, k),
    weights (B, T, k)."""

    records: list[dict] = field(default_factory=list)

    def _add(self, routing: LayerRouting) -> None:
        self.records.append({
            "modality": routing.modality, "layer": routing.layer,
            "gate_logits": routing.gate_logits.detach().float().cpu(),
            "topk": routing.topk.detach().cpu(),
            "weights": routing.weights.detach().float().cpu(),
        })


def _key(name: str) -> str | None:
    for prefix, key in _PREFIXES:
        position = name.find(prefix)
        if position == 0 or (position > 0 and name[position - 1] == "."):
            return key
    return None


@contextlib.contextmanager
def capture_attention(model: nn.Module) -> Iterator[AttentionCapture]:
    """Record every attention map of ``model`` while the block runs.

    Example::

        with capture_attention(model) as att:
            model.encode_image(images)
        att.maps["image"][-1]   # (B, heads, 1 + P, 1 + P), last layer, CLS first
    """
    capture = AttentionCapture()
    visual = next((m for n, m in model.named_modules() if n.endswith("base_model.visual") or n == "visual"), None)
    if visual is not None and hasattr(visual, "grid"):
        capture.meta = {"grid": tuple(visual.grid), "img_size": tuple(visual.image_size)}
    saved = []
    trimmed = [m for m in model.modules() if getattr(m, "trim_text_padding", False)]
    try:
        for module in trimmed:  # text maps keep the full caption length L
            module.trim_text_padding = False
        for name, module in model.named_modules():
            if isinstance(module, Attention):
                key = _key(name) or name
                saved.append((module, module.recorder))
                module.recorder = (lambda probs, key=key: capture._add(key, probs))
            elif isinstance(module, CRFM):
                saved.append((module, module.recorder))
                module.recorder = (lambda modality, probs: capture._add(f"crfm_{modality}", probs))
        yield capture
    finally:
        for module, previous in saved:
            module.recorder = previous
        for module in trimmed:
            module.trim_text_padding = True


@contextlib.contextmanager
def capture_routing(model: nn.Module) -> Iterator[RoutingCapture]:
    """Record the routing of every EFP layer (PHP) while the block runs; empty for IRRA."""
    capture = RoutingCapture()
    saved = []
    try:
        for module in model.modules():
            if isinstance(module, MoEAdapters):
                saved.append((module, module.recorder))
                module.recorder = capture._add
        yield capture
    finally:
        for module, previous in saved:
            module.recorder = previous
