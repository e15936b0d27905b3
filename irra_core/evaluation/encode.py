"""Encode an evaluation split (captions = queries, images = gallery) through the model's public
``encode_text`` / ``encode_image``, in annotation order whatever the loader order was."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from irra_core.runtime import resolve_device as runtime_resolve_device, tune_cpu


@dataclass
class EncodedSplit:
    """Embeddings of one split, rows in annotation order (float32, CPU, not normalised).

    ``q_feats`` (Q, D) caption embeddings with ``q_pids`` (Q,); ``g_feats`` (G, D) image embeddings with
    ``g_pids`` (G,); ``captions`` (Q strings) and ``img_paths`` (G strings) as the loaders saw them.
    """

    q_feats: torch.Tensor
    q_pids: torch.Tensor
    g_feats: torch.Tensor
    g_pids: torch.Tensor
    captions: list = field(default_factory=list)
    img_paths: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"q_feats": self.q_feats, "q_pids": self.q_pids, "g_feats": self.g_feats,
                "g_pids": self.g_pids, "captions": list(self.captions), "img_paths": list(self.img_paths)}

    @classmethod
    def from_dict(cls, data: dict) -> "EncodedSplit":
        missing = {"q_feats", "q_pids", "g_feats", "g_pids"} - set(data)
        if missing:
            raise ValueError(f"embedding cache lacks {sorted(missing)}; delete it to re-encode")
        return cls(**{k: data[k] for k in ("q_feats", "q_pids", "g_feats", "g_pids")},
                   captions=list(data.get("captions", [])), img_paths=list(data.get("img_paths", [])))


def resolve_device(device: Any = None, cfg: Any = None, model: Optional[nn.Module] = None) -> torch.device:
    """``device`` if given, else the model's parameters' device, else ``cfg.train.device``; the name is then
    resolved by :func:`irra_core.runtime.resolve_device` (``auto``: cuda when available).

    Raises:
        ConfigError: a CUDA device asked for where there is none, or an unknown device name.
    """
    if device is None and model is not None:
        param = next(iter(model.parameters()), None)
        if param is not None:
            return param.device
    if device is None and cfg is not None:
        device = getattr(getattr(cfg, "train", None), "device", None)
    return runtime_resolve_device(device)


def _autocast(device: torch.device):
    # bf16 autocast only on CUDA: on CPUs without bf16 units it is ~2.7x slower (perf.json).
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _encode_loader(loader, encode, device: torch.device, desc: str, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    feats, pids = [], []
    iterator = loader
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(loader, desc=desc, leave=False)
    for batch_pids, inputs in iterator:
        with _autocast(device):
            out = encode(inputs.to(device, non_blocking=True))
        feats.append(out.float().cpu())
        pids.append(torch.as_tensor(batch_pids).long())
    feats_t, pids_t = torch.cat(feats), torch.cat(pids)
    order = getattr(loader.dataset, "order", None)
    if order is not None:  # row i of the loader output is split item order[i]: put it back
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.as_tensor(order, dtype=torch.long)] = torch.arange(len(order))
        feats_t, pids_t = feats_t[inverse], pids_t[inverse]
    return feats_t, pids_t


@torch.no_grad()
def encode_split(
    model: nn.Module,
    cfg: Any,
    split: Any = "test",
    *,
    device: Any = None,
    batch_size: Optional[int] = None,
    shuffle: bool = False,
    seed: int = 0,
    progress: bool = False,
    loaders: Optional[tuple] = None,
) -> EncodedSplit:
    """Encode the queries (captions) and gallery (images) of ``split``.

    Args:
        split: ``"val"`` | ``"test"`` or a split dict (``image_pids``, ``img_paths``, ``caption_pids``,
            ``captions``), passed to ``irra_core.data.build_eval_loaders``.
        batch_size: default ``cfg.data.test_batch_size``.
        shuffle, seed: encode in a seeded random order (rows are still returned in annotation order);
            a per-sample model gives the same embeddings either way.
        loaders: ``(gallery_loader, query_loader)`` to use instead of building them.
        device: where inputs go (default: the model's device); the model is not moved.

    The model runs in eval mode without gradients (bf16 autocast on CUDA) and gets its training mode
    back afterwards; ``progress`` shows tqdm bars. Returns an :class:`EncodedSplit` of (Q, D) / (G, D) float32 CPU embeddings.
    Tunes the process for CPU work once (:func:`irra_core.runtime.tune_cpu`: the C allocator and flush-to-zero;
    ``IRRA_MALLOC_TUNING=0`` and ``IRRA_FLUSH_DENORMALS=0`` opt out).
    """
    tune_cpu()
    device = resolve_device(device, cfg, model)
    if loaders is None:
        from irra_core.data import build_eval_loaders

        loaders = build_eval_loaders(cfg, split, batch_size=batch_size, shuffle=shuffle, seed=seed)
    gallery_loader, query_loader = loaders
    was_training = model.training
    model.eval()
    try:
        q_feats, q_pids = _encode_loader(query_loader, model.encode_text, device, "captions", progress)
        g_feats, g_pids = _encode_loader(gallery_loader, model.encode_image, device, "images", progress)
    finally:
        model.train(was_training)
    return EncodedSplit(
        q_feats=q_feats, q_pids=q_pids, g_feats=g_feats, g_pids=g_pids,
        captions=list(getattr(query_loader.dataset, "captions", [])),
        img_paths=list(getattr(gallery_loader.dataset, "img_paths", [])),
    )


@torch.no_grad()
def encode_captions(model: nn.Module, cfg: Any, captions: list, *, device: Any = None,
                    batch_size: Optional[int] = None, progress: bool = False) -> torch.Tensor:
    """Caption embeddings (N, D) float32 on the CPU, not normalised, through ``model.encode_text``.

    Captions are tokenised to ``cfg.data.text_length``; used for query banks (QB-Norm's training captions).
    """
    from torch.utils.data import DataLoader

    from irra_core.data.datasets import TextDataset

    device = resolve_device(device, cfg, model)
    loader = DataLoader(TextDataset([0] * len(captions), list(captions), cfg.data.text_length),
                        batch_size=batch_size or cfg.data.test_batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    try:
        feats, _ = _encode_loader(loader, model.encode_text, device, "bank captions", progress)
    finally:
        model.train(was_training)
    return feats
