"""Glue for the inspection notebooks: a checkpoint -> model, split, gallery features, per-query table.

:func:`load_run` reads any checkpoint through :func:`irra_core.model.load.load_model` (a training run folder
written by ``irra_core.engine.fit``, an IRRA/PHP log folder or a .pth file), rebuilds the model, encodes the test gallery and captions once, and keeps the
per-query table (``queries.csv`` from ``evaluate`` when present, else recomputed with the same exact ranking).
:class:`InspectRun` is what the plotting functions and the explorers work from; tests build one directly
from a small model and a synthetic split.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from irra_core.viz import retrieval


@dataclass
class InspectRun:
    """A trained model with its evaluation split and cached features.

    Attributes:
        name: label shown in the explorers (e.g. ``irra/best``).
        model: the model (eval mode), with ``encode_image`` / ``encode_text``.
        split: ``{"image_pids", "img_paths", "caption_pids", "captions"}`` (gallery = images, queries = captions).
        img_size: (H, W) the model's input crop.
        text_length: L, the token length used for free text.
        gallery_feats: (G, D) image features, computed on first use.
        query_feats: (Q, D) caption features, computed on first use.
        queries: the per-query table (``query_index, pid, caption, first_hit_rank, AP, INP, top10_*``).
    """

    name: str
    model: torch.nn.Module
    split: dict
    img_size: tuple[int, int]
    text_length: int = 77
    device: str = "cpu"
    batch_size: int = 64
    run_dir: Path | None = None
    cfg: object = None
    split_name: str = "test"
    gallery_feats: torch.Tensor | None = None
    query_feats: torch.Tensor | None = None
    queries: pd.DataFrame | None = None
    _transform: object = field(default=None, repr=False)

    # ---- images -------------------------------------------------------------------------------------
    def display_image(self, index: int) -> np.ndarray:
        """Gallery image ``index`` as (H, W, 3) floats in [0, 1], resized to the model's crop."""
        from PIL import Image

        h, w = self.img_size
        with Image.open(self.split["img_paths"][index]) as im:
            return np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0

    def model_images(self, indices: Sequence[int]) -> torch.Tensor:
        """Gallery images as the model sees them at test time: (B, 3, H, W)."""
        from PIL import Image

        if self._transform is None:
            from irra_core.data import build_transforms

            self._transform = build_transforms(self.img_size, is_train=False)
        out = []
        for i in indices:
            with Image.open(self.split["img_paths"][int(i)]) as im:
                out.append(self._transform(im.convert("RGB")))
        return torch.stack(out)

    def caption_ids(self, captions: Sequence[str]) -> torch.Tensor:
        """Tokenised captions (B, L) with the run's text length."""
        from irra_core.data import tokenize

        return tokenize(list(captions), context_length=self.text_length)

    # ---- features and rankings ----------------------------------------------------------------------
    @torch.no_grad()
    def ensure_features(self) -> None:
        """Encode the gallery and all captions once (eval mode, batches of ``batch_size``)."""
        self.model.eval()
        if self.cfg is not None and self.gallery_feats is None and self.query_feats is None:
            # the evaluation layer's encoder and embedding cache (shared with 20_evaluate when the keys match)
            from irra_core.evaluation import load_or_encode

            cache = self.run_dir / "cache" if self.run_dir is not None else None
            enc = load_or_encode(self.model, self.cfg, self.split_name, device=self.device, cache_dir=cache)
            if len(enc.g_feats) != len(self.split["img_paths"]) or len(enc.q_feats) != len(self.split["captions"]):
                raise ValueError(f"{self.name}: encoded {self.split_name} split ({len(enc.g_feats)} images, "
                                 f"{len(enc.q_feats)} captions) does not match the loaded split")
            self.gallery_feats, self.query_feats = enc.g_feats.float().cpu(), enc.q_feats.float().cpu()
        if self.gallery_feats is None:
            n = len(self.split["img_paths"])
            feats = [self.model.encode_image(self.model_images(range(s, min(n, s + self.batch_size))).to(self.device))
                     for s in range(0, n, self.batch_size)]
            self.gallery_feats = torch.cat(feats).float().cpu()
        if self.query_feats is None:
            caps = self.split["captions"]
            feats = [self.model.encode_text(self.caption_ids(caps[s:s + self.batch_size]).to(self.device))
                     for s in range(0, len(caps), self.batch_size)]
            self.query_feats = torch.cat(feats).float().cpu()

    def query_table(self) -> pd.DataFrame:
        """The per-query table; recomputed exactly from the features when no ``queries.csv`` was found."""
        if self.queries is None:
            self.ensure_features()
            self.queries = compute_query_table(self.query_feats, self.gallery_feats, self.split)
        return self.queries

    def rank_text(self, text: str, top_k: int = 10) -> tuple[list[int], list[float]]:
        """Top-k gallery indices and cosine scores for a free-text query."""
        self.ensure_features()
        idx, scores = retrieval.rank_free_text(self.model, text, self.gallery_feats, top_k=top_k,
                                               context_length=self.text_length, device=self.device)
        return idx[0].tolist(), scores[0].tolist()


def compute_query_table(query_feats: torch.Tensor, gallery_feats: torch.Tensor, split: dict, top_k: int = 10) -> pd.DataFrame:
    """Per-query table in ``queries.csv``'s format from (Q, D) caption and (G, D) image features (cosine)."""
    from irra_core.evaluation import rank_per_query

    q = torch.nn.functional.normalize(query_feats.float(), dim=-1)
    g = torch.nn.functional.normalize(gallery_feats.float(), dim=-1)
    r = rank_per_query(q_pids=torch.as_tensor(split["caption_pids"]), g_pids=torch.as_tensor(split["image_pids"]),
                       q_feats=q, g_feats=g, topk=min(top_k, len(g)))
    return pd.DataFrame({
        "query_index": range(len(q)), "pid": list(split["caption_pids"]), "caption": list(split["captions"]),
        "first_hit_rank": r.first_hit_rank.tolist(), "AP": r.ap.tolist(), "INP": r.inp.tolist(),
        "top10_indices": r.topk_indices.tolist(), "top10_scores": r.topk_scores.tolist(),
    })


def find_queries_csv(run_dir: Path, tag: str, split: dict) -> Path | None:
    """``queries.csv`` of a run for a checkpoint tag that belongs to ``split``.

    Looks in ``eval/*<tag>*/`` then the run folder; a table whose rows do not match the split's captions
    (another split, another dataset) is passed over with a note, and the table is then recomputed.
    """
    candidates = sorted((run_dir / "eval").glob(f"*{tag}*/queries.csv")) + [run_dir / "queries.csv"]
    for path in candidates:
        if not path.exists():
            continue
        table = retrieval.read_queries(path)
        if len(table) == len(split["captions"]) and list(table["caption"][:3]) == list(split["captions"][:3]):
            return path
        print(f"{path}: per-query table of another split ({len(table)} rows); recomputing it")
    return None


def load_run(run_dir: str | Path, checkpoint: str = "best", *, split: str = "test", device: str = "cpu",
             name: str | None = None, dataset=None, overrides: Mapping[str, object] | None = None,
             work_dir: str | Path | None = None) -> InspectRun:
    """Load any checkpoint for inspection: a workbook run folder, an IRRA/PHP log folder or a .pth/.pt file.

    The model comes from :func:`irra_core.model.load.load_model` (sizes from the weights, nothing downloaded: a
    ``paper`` run never asks for ViT-B/16); ``load_report`` on the model says what was read.

    Args:
        run_dir: the checkpoint source (a training run folder: ``config.yaml``, ``checkpoints/<checkpoint>.pt``).
        checkpoint: ``best`` | ``last``.
        split: ``test`` | ``val``.
        device: where the model runs.
        dataset: an already built ``PedesDataset`` (saves re-parsing when loading several runs).
        overrides: dotted overrides of the loaded configuration: the dataset to inspect on (``{"data.dataset":
            "CUHK-PEDES", "data.root": "/data"}``, see :func:`checkpoint_data`; default the checkpoint's own) or a
            model switch (``{"model.efp_attention": "batch"}``).
        work_dir: folder for the embedding cache and ``eval/*/queries.csv`` (default: ``run_dir`` when it is a
            workbook run folder, else none).

    Raises:
        FileNotFoundError: the folder or checkpoint is missing (the message names it and which notebook writes it).
    """
    from irra_core.model.load import load_model

    run_dir = Path(run_dir)
    if run_dir.is_dir() and (run_dir / "config.yaml").exists() and not (run_dir / "checkpoints").is_dir():
        raise FileNotFoundError(f"{run_dir / 'checkpoints'} is missing: train this run first "
                                f"(notebooks 10_train_irra / 11_train_php)")
    if not run_dir.exists():
        raise FileNotFoundError(f"{run_dir} is missing: train this run first (notebooks 10_train_irra / "
                                f"11_train_php), or pass an existing checkpoint")
    model = load_model(run_dir, checkpoint=checkpoint, device=device, **dict(overrides or {}))
    cfg = model.cfg
    if dataset is None:
        from irra_core.data import prepare_dataset

        dataset = prepare_dataset(cfg)
    is_run = model.load_report.kind == "workbook-run" and run_dir.is_dir()
    work = Path(work_dir) if work_dir is not None else (run_dir if is_run else None)
    split_dict = getattr(dataset, split)
    queries_csv = find_queries_csv(work, checkpoint if is_run else "checkpoint", split_dict) if work else None
    label = name or (f"{run_dir.name}/{checkpoint}" if run_dir.is_dir() else run_dir.name)
    return InspectRun(name=label, model=model, split=split_dict,
                      img_size=tuple(cfg.data.img_size), text_length=cfg.data.text_length, device=device,
                      batch_size=cfg.data.test_batch_size, run_dir=work, cfg=cfg, split_name=split,
                      queries=retrieval.read_queries(queries_csv) if queries_csv else None)


def checkpoint_data(dataset: str, data_root: str, overrides: Mapping[str, object] | None = None, *,
                    smoke: bool = False) -> dict:
    """The ``data.*`` overrides that evaluate an existing checkpoint on a notebook's dataset.

    Model-bound data fields (image size, text length) stay the checkpoint's; the dataset, its root, the
    synthetic generator's sizes (the smoke preset's with ``smoke``), and any ``data.*`` key of ``overrides``
    (the notebook's ``OVERRIDES``) come from the notebook.
    """
    import yaml

    from irra_core.config import PRESET_DIR

    values: dict = {"data.dataset": dataset, "data.root": str(data_root)}
    if smoke:
        smoke_data = (yaml.safe_load((PRESET_DIR / "smoke.yaml").read_text()) or {}).get("data", {})
        values.update({f"data.{k}": v for k, v in smoke_data.items()
                       if k.startswith("synthetic_") or k in ("test_batch_size", "num_workers")})
    values.update({k: v for k, v in dict(overrides or {}).items() if k.startswith("data.")})
    return values


def decode_tokens(ids: torch.Tensor) -> list[str]:
    """Readable tokens of one tokenised caption (L,) up to and including EOT (BPE word ends become plain words)."""
    from irra_core.data.tokenizer import get_tokenizer

    tok = get_tokenizer()
    out = []
    for i in ids.tolist():
        if i == 0 and out:
            break
        word = tok.decoder[int(i)].replace("</w>", "")
        out.append(word)
        if word == "<|endoftext|>":
            break
    return out


@torch.no_grad()
def capture_image(run: InspectRun, indices: Sequence[int], *, routing: bool = False):
    """Encode gallery images inside the capture context managers.

    Returns:
        ``(att, rt)``: the ``capture_attention`` recorder (``maps``, ``meta``) and, with ``routing=True``, the
        ``capture_routing`` recorder (``records``), else ``None``.
    """
    from irra_core.model.capture import capture_attention, capture_routing

    images = run.model_images(indices).to(run.device)
    run.model.eval()
    if routing:
        with capture_attention(run.model) as att, capture_routing(run.model) as rt:
            run.model.encode_image(images)
        return att, rt
    with capture_attention(run.model) as att:
        run.model.encode_image(images)
    return att, None


@torch.no_grad()
def capture_text(run: InspectRun, captions: Sequence[str], *, routing: bool = False):
    """Encode captions inside the capture context managers; returns ``(att, rt, ids (B, L))``."""
    from irra_core.model.capture import capture_attention, capture_routing

    ids = run.caption_ids(captions).to(run.device)
    run.model.eval()
    if routing:
        with capture_attention(run.model) as att, capture_routing(run.model) as rt:
            run.model.encode_text(ids)
        return att, rt, ids.cpu()
    with capture_attention(run.model) as att:
        run.model.encode_text(ids)
    return att, None, ids.cpu()


def _layer_records(records, modality: str, layer: int) -> dict:
    found = [r for r in records if r["modality"] == modality and int(r["layer"]) == layer]
    if not found:
        layers = sorted({int(r["layer"]) for r in records if r["modality"] == modality})
        raise ValueError(f"no {modality} routing record for EFP layer {layer} (layers captured: {layers})")
    return found[0]


def image_expert_map(run: InspectRun, index: int, layer: int = 0):
    """Per-patch expert of gallery image ``index`` at EFP ``layer``, read through the CRFM weights.

    Returns:
        ``(expert (P,), share (P,), grid (gh, gw), num_experts)``; see :func:`irra_core.viz.routing.token_expert_map`.
    """
    from irra_core.viz.routing import token_expert_map

    att, rt = capture_image(run, [index], routing=True)
    rec = _layer_records(rt.records, "image", layer)
    num_experts = rec["gate_logits"].shape[-1]
    expert, share = token_expert_map(rec["topk"][0], att.maps["crfm_image"][0][0], num_experts)
    return expert, share, tuple(att.meta["grid"]), num_experts


def caption_expert_map(run: InspectRun, caption: str, layer: int = 0):
    """Per-word expert of a caption at EFP ``layer`` through the CRFM text weights.

    Returns:
        ``(words, expert (L',), share (L',), num_experts)`` over the tokens up to EOT (SOT/EOT included).
    """
    from irra_core.viz.routing import token_expert_map

    att, rt, ids = capture_text(run, [caption], routing=True)
    rec = _layer_records(rt.records, "text", layer)
    num_experts = rec["gate_logits"].shape[-1]
    words = decode_tokens(ids[0])
    expert, share = token_expert_map(rec["topk"][0], att.maps["crfm_text"][0][0][:, :len(words)], num_experts)
    return words, expert, share, num_experts


@torch.no_grad()
def capture_cross(run: InspectRun, index: int, caption: str):
    """IRRA's relation-reasoning branch on one (caption, image) pair, recorded.

    The MLM branch is not part of ``encode_*``: the caption's token features (B, L, D) attend over the image's
    (B, 1 + P, D) in ``cross_former``, as in training but with the unmasked caption.

    Returns:
        ``(cross (L, P), words, grid)``: head-averaged text-token -> patch attention (CLS key dropped,
        renormalised), the decoded tokens up to EOT, and the patch grid.

    Raises:
        ValueError: the model has no MLM branch (``mlm`` not in ``cfg.loss.names``).
    """
    from irra_core.model.capture import capture_attention
    from irra_core.viz.attention import text_to_patch

    model = run.model
    if not hasattr(model, "cross_former") or not hasattr(model, "cross_attn"):
        raise ValueError(f"{run.name}: the model has no relation-reasoning (MLM) branch; train it with 'mlm' "
                         f"in loss.names (the IRRA presets do)")
    model.eval()
    images = run.model_images([index]).to(run.device)
    ids = run.caption_ids([caption]).to(run.device)
    with capture_attention(model) as att:
        text_tokens = model.base_model.encode_text(ids)
        image_tokens = model.base_model.encode_image(images)
        model.cross_former(text_tokens, image_tokens)
    words = decode_tokens(ids[0].cpu())
    cross = text_to_patch(att.maps["cross"][0])[0, :len(words)]
    return cross, words, tuple(att.meta["grid"])


def first_gallery_image(run: InspectRun, query_index: int) -> int:
    """Gallery index of the first image of the query's identity (its ground truth)."""
    pid = run.split["caption_pids"][query_index]
    for i, p in enumerate(run.split["image_pids"]):
        if p == pid:
            return i
    raise ValueError(f"query {query_index} (pid {pid}) has no image in the gallery")


@torch.no_grad()
def collect_routing(run: InspectRun, limit: int | None = None) -> list[dict]:
    """EFP routing records of the split's gallery images and captions, batch by batch (eval mode).

    Only ``capture_routing`` is entered (no attention maps are kept), so a whole split fits in memory.
    Image and text passes are separate records, so their statistics never mix (SPEC §2.9).

    Args:
        limit: at most this many images and this many captions (``None`` = all).
    """
    from irra_core.model.capture import capture_routing

    run.model.eval()
    n_img = len(run.split["img_paths"]) if limit is None else min(limit, len(run.split["img_paths"]))
    caps = run.split["captions"][: (len(run.split["captions"]) if limit is None else limit)]
    with capture_routing(run.model) as rt:
        for s in range(0, n_img, run.batch_size):
            run.model.encode_image(run.model_images(range(s, min(n_img, s + run.batch_size))).to(run.device))
        for s in range(0, len(caps), run.batch_size):
            run.model.encode_text(run.caption_ids(caps[s:s + run.batch_size]).to(run.device))
    if not rt.records:
        raise ValueError(f"{run.name}: no routing recorded; only PHP models (model.arch = 'php') have EFP experts")
    return rt.records


def load_runs(run_dir: str | Path, checkpoint: str = "best", *, device: str = "cpu",
              models: Sequence[str] = ("irra", "php"), checkpoint_path: str | Path = "",
              overrides: Mapping[str, object] | None = None) -> dict[str, InspectRun]:
    """Load the trained models of a workbook run (``<run_dir>/irra``, ``<run_dir>/php``) that exist.

    Missing ones are reported by name; none at all is an error naming the notebooks that train them. With
    ``checkpoint_path`` (the notebooks' ``CHECKPOINT_PATH``, ``pipeline --checkpoint``) that checkpoint is loaded
    instead, named by its architecture (``irra`` | ``php``), with ``overrides`` (:func:`checkpoint_data`) and
    its cache under ``<run_dir>/checkpoint/``; an architecture not in ``models`` is an error.
    """
    run_dir = Path(run_dir)
    if checkpoint_path:
        run = load_run(checkpoint_path, checkpoint, device=device, overrides=overrides,
                       work_dir=run_dir / "checkpoint")
        arch = run.cfg.model.arch
        run.name = f"{arch} ({Path(checkpoint_path).name})"
        if arch not in models:
            raise ValueError(f"{checkpoint_path} is a {arch} model; this notebook needs {list(models)}")
        print(run.model.load_report.summary())
        return {arch: run}
    found = {m: run_dir / m for m in models if (run_dir / m / "config.yaml").exists()}
    missing = [m for m in models if m not in found]
    if not found:
        raise FileNotFoundError(f"no trained model under {run_dir} (looked for {list(models)}): run notebooks "
                                f"10_train_irra / 11_train_php with RUN_NAME={run_dir.name!r} first")
    if missing:
        print(f"not trained in {run_dir.name}: {missing} (their figures are left out)")
    return {name: load_run(folder, checkpoint, device=device, name=f"{name}/{checkpoint}")
            for name, folder in found.items()}


def pointing_pairs(run, num_pairs: int, seed: int = 0) -> list[tuple[int, int]]:
    """The (caption, image) pairs the pointing game reads: ``num_pairs`` distinct random test captions (all when
    there are fewer), each with its identity's first gallery image (:func:`first_gallery_image`).

    Returns:
        ``[(caption index, gallery index)]``, the same for the same split, ``num_pairs`` and ``seed``.
    """
    rng = np.random.default_rng([seed, 31])
    count = len(run.split["captions"])
    return [(int(q), first_gallery_image(run, int(q))) for q in rng.choice(count, size=min(num_pairs, count),
                                                                               replace=False)]


def word_patch_maps(run, num_pairs: int = 200, seed: int = 0) -> tuple[list, tuple[int, int], str, list[int]]:
    """Word -> patch maps of ``num_pairs`` random test captions on their identity's first gallery image,
    with that image's part boxes, ready for :func:`irra_core.viz.attention.score_pointing`.

    IRRA: the relation-reasoning branch's cross-attention (:func:`irra_core.viz.inspect.capture_cross`).
    PHP: through CRFM's unified tokens, ``map(word) = sum_c share_c(word) * crfm_image[c]`` where
    ``share_c(word)`` is the CRFM text weight of unified token c on the word, normalised over c (the word's
    split among the unified tokens), and ``crfm_image[c]`` (P,) that token's weights over the patches.

    Args:
        run: an :class:`irra_core.viz.inspect.InspectRun` on a synthetic split (its images have
            ``regions.json`` boxes).

    Returns:
        ``(samples, grid, source, images)``: ``[(maps (L, P), tokens, regions)]``, the patch grid,
        ``"cross-attention"`` | ``"CRFM"`` and the gallery index of each sample's image.

    Raises:
        ValueError: the model has neither an MLM branch nor CRFM.
        FileNotFoundError: the split's images have no ``regions.json`` (not synthetic).
    """
    from irra_core.data.synthetic import load_regions

    model = run.model
    captions = run.split["captions"]
    irra_branch = hasattr(model, "cross_former") and hasattr(model, "cross_attn")
    samples, grid, images = [], None, []
    for q, g in pointing_pairs(run, num_pairs, seed):
        images.append(g)
        regions = load_regions(run.split["img_paths"][g])
        if irra_branch:
            maps, words, grid = capture_cross(run, g, captions[q])
        else:
            att, _ = capture_image(run, [g])
            if "crfm_image" not in att.maps:
                raise ValueError(f"{run.name}: neither an MLM branch nor CRFM to read word -> patch maps from")
            image_tokens = att.maps["crfm_image"][0][0].float()  # (cnum, P)
            grid = tuple(att.meta["grid"])
            text_att, _, ids = capture_text(run, [captions[q]])
            words = decode_tokens(ids[0])
            share = text_att.maps["crfm_text"][0][0][:, :len(words)].float()  # (cnum, L')
            share = share / share.sum(0, keepdim=True).clamp_min(1e-12)
            maps = share.T @ image_tokens  # (L', P)
        samples.append((maps, words, regions))
    return samples, tuple(grid), "cross-attention" if irra_branch else "CRFM", images
