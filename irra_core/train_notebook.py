"""The cells of the two training notebooks (``10_train_irra``, ``11_train_php``), one call each.

A training notebook sets up a run (:func:`training_setup`), walks one batch through a freshly built model
(:func:`one_batch_walkthrough`: the tensor shapes at each step of the method, and :func:`sdm_targets_figure`:
the SDM target matrix of that batch beside the model's matching), trains (:func:`train_with_live_curves`),
then shows the per-step losses, the epoch curves, the epoch table and the test metrics. Every function
takes the model name (``"irra"`` | ``"php"``), so the two notebooks differ only in their text and that name.
Figures are saved under ``<run>/figures/`` as ``10_*_irra.png`` / ``11_*_php.png``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from irra_core import runtime
from irra_core.runtime import resolve_device
from irra_core.workbook import resolve_run_dir, workbook_config

__all__ = ["NOTEBOOK_PREFIX", "BatchWalkthrough", "training_setup", "one_batch_walkthrough", "sdm_targets_figure",
           "train_with_live_curves", "step_loss_figure", "epoch_curves_figure", "epoch_table",
           "selected_checkpoint_metrics"]

#: model -> the number of its training notebook (prefix of its figure names)
NOTEBOOK_PREFIX = {"irra": "10", "php": "11"}
_TITLES = {"irra": "IRRA", "php": "PHP"}
#: the columns of the epoch table (``log.jsonl``)
_EPOCH_COLUMNS = "^(epoch|lr|loss|.*_loss|t2i_R1|t2i_mAP|epoch_time_s|pairs_per_s)$"


def _figure_path(run_dir: Path, arch: str, what: str) -> Path:
    if arch not in NOTEBOOK_PREFIX:
        raise ValueError(f"model must be one of {sorted(NOTEBOOK_PREFIX)}, got {arch!r}")
    return Path(run_dir) / "figures" / f"{NOTEBOOK_PREFIX[arch]}_{what}_{arch}.png"


def training_setup(arch: str, run_name: str, preset: str, dataset: str, data_root: str,
                   overrides: Mapping[str, Any] | None, *, smoke: bool, device: str, seed: int,
                   interactive: bool) -> tuple[Path, Any]:
    """The notebook's run folder and configuration, printed as one line; applies the plotting theme and tunes the
    process for CPU work (:func:`irra_core.runtime.tune_cpu`: C allocator, flush-to-zero) before anything large is
    allocated or computed.

    Args:
        arch: ``"irra"`` or ``"php"``; the other arguments are the notebook's standard parameters
            (:func:`irra_core.workbook.resolve_run_dir`, :func:`irra_core.workbook.workbook_config`).

    Returns:
        ``(run_dir, cfg)``: the workbook run folder (the model trains into ``run_dir / arch``) and the
        resolved :class:`irra_core.config.Config`.
    """
    from irra_core.config import preset_for
    from irra_core.viz import set_theme

    runtime.tune_cpu()
    set_theme()
    run_dir = resolve_run_dir(run_name, preset, dataset, smoke=smoke)
    cfg = workbook_config(arch, preset, dataset, data_root, overrides, smoke=smoke, device=device, seed=seed,
                          interactive=interactive)
    m = cfg.model
    print(f"preset {preset_for(arch, preset)}{' (smoke)' if smoke else ''}: losses {cfg.loss.names}, "
          f"{cfg.train.num_epoch} epochs, batch {cfg.data.batch_size}, images {cfg.data.img_size}, "
          f"towers {m.vision_layers}x{m.vision_width} / {m.text_layers}x{m.text_width}, device {cfg.train.device}")
    return run_dir, cfg


@dataclass
class BatchWalkthrough:
    """One training batch through a freshly built model (:func:`one_batch_walkthrough`).

    Attributes:
        shapes: one row per tensor, in the order the method computes them: ``step``, ``tensor``,
            ``symbol`` (the notebook's equations), ``shape``, ``note``.
        pids: (B,) person ids of the batch.
        logits: (B, B) image-to-text logits s cos(v_i, t_j) of the global features.
        losses: the model's weighted loss terms on this batch (``sdm_loss`` ...), floats.
    """

    shapes: pd.DataFrame
    pids: torch.Tensor
    logits: torch.Tensor
    losses: dict[str, float]


def _shape(tensor: torch.Tensor) -> str:
    return str(tuple(int(n) for n in tensor.shape))


def one_batch_walkthrough(cfg: Any) -> BatchWalkthrough:
    """Build the model of ``cfg`` (seeded with ``cfg.train.seed``, untrained), run its first training
    batch through it in eval mode without gradients, and list every intermediate tensor's shape.

    Covers the inputs, both towers (tokens and per-block attention), the global features, SDM's logits and
    targets, and per model: IRRA's ID logits and MLM branch (cross-attention text -> image, masked positions);
    PHP's CRFM pooling weights and EFP routing (gate logits, top-k experts, their weights, the aux term per
    layer). Attention maps come from :func:`irra_core.model.capture_attention`. The training run itself
    builds its own model; this one is discarded.

    Returns:
        :class:`BatchWalkthrough`.

    Raises:
        whatever :func:`irra_core.data.prepare_dataset` raises for a missing or malformed dataset.
    """
    from irra_core.data import build_train_loader, prepare_dataset
    from irra_core.engine import seed_everything
    from irra_core.losses import sdm_targets, total_loss
    from irra_core.model import build_model, capture_attention
    from irra_core.model.precision import AUTOCAST_DTYPES

    # Tuned (runtime.tune_cpu) before this throwaway model is built, not later in fit(): before the heavy
    # allocations, and before torch's OpenMP team starts, so its threads inherit flush-to-zero (irra_core.runtime;
    # benchmarks/README.md, "Eleventh pass" and "Twelfth pass").
    runtime.tune_cpu()
    seed_everything(cfg.train.seed)
    dataset = prepare_dataset(cfg)
    model = build_model(cfg, dataset.num_classes)
    device = resolve_device(cfg.train.device)
    model.to(device).eval()
    batch = {k: v.to(device) for k, v in next(iter(build_train_loader(cfg, dataset))).items() if torch.is_tensor(v)}
    dtype = AUTOCAST_DTYPES.get(cfg.model.precision)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        with capture_attention(model) as image_att:
            image_feats, image_tokens, image_routing = model.image_features(batch["images"])
        with capture_attention(model) as text_att:
            text_feats, text_tokens, text_routing = model.text_features(batch["caption_ids"])
        with capture_attention(model) as forward_att:
            outputs = model(batch)
    scale = 1.0 / cfg.model.temperature
    logits = (scale * F.normalize(image_feats.float(), dim=-1) @ F.normalize(text_feats.float(), dim=-1).t()).cpu()
    pids = batch["pids"].cpu()
    rows = _input_rows(batch, pids)
    rows += _tower_rows("image tower", image_tokens, image_att.maps["image"], "CLS + patch tokens after ln_post @ proj")
    rows += _tower_rows("text tower", text_tokens, text_att.maps["text"],
                        "every position after ln_final @ text_projection (causal; EOT = argmax id)")
    if image_routing:  # PHP: CRFM tokens through the EFP blocks
        rows += _php_rows(image_att.maps, text_att.maps, image_routing, text_routing, image_feats, text_feats)
    else:
        rows += [("global features", "image feature (CLS)", "v_i", _shape(image_feats), ""),
                 ("global features", "text feature (EOT)", "t_j", _shape(text_feats), "")]
    rows += [("SDM", "image-to-text logits", "s cos(v_i, t_j)", _shape(logits), f"s = 1/temperature = {scale:g}"),
             ("SDM", "targets", "q_ij", _shape(sdm_targets(pids)), "y_ij / Σ_k y_ik")]
    rows += _irra_head_rows(cfg, batch, forward_att.maps, dataset.num_classes)
    with torch.no_grad():
        loss_terms = {k: float(v) for k, v in total_loss(outputs, batch, cfg.loss_weights()).items()}
    rows += [("loss", name, "L_" + name[:-len("_loss")], "()", f"{value:.4f} (weighted)")
             for name, value in loss_terms.items()]
    rows.append(("loss", "total", "L", "()", f"{sum(loss_terms.values()):.4f}"))
    shapes = pd.DataFrame(rows, columns=["step", "tensor", "symbol", "shape", "note"])
    return BatchWalkthrough(shapes=shapes, pids=pids, logits=logits, losses=loss_terms)


def _input_rows(batch: dict, pids: torch.Tensor) -> list[tuple]:
    counts = torch.unique(pids, return_counts=True)[1]
    rows = [("input", "images", "x", _shape(batch["images"]), "B images, RGB, H x W, normalised"),
            ("input", "caption_ids", "w", _shape(batch["caption_ids"]), "SOT ... EOT, zero-padded to L"),
            ("input", "pids", "pid", _shape(pids),
             f"{counts.numel()} identities, {int(counts.min())}-{int(counts.max())} pairs each")]
    if "mlm_ids" in batch:
        masked = int((batch["mlm_labels"] != 0).sum())
        rows += [("input", "mlm_ids", "w̃", _shape(batch["mlm_ids"]), f"{masked} positions masked or replaced"),
                 ("input", "mlm_labels", "", _shape(batch["mlm_labels"]), "original id at those positions, 0 elsewhere")]
    return rows


def _tower_rows(step: str, tokens: torch.Tensor, maps: list[torch.Tensor], note: str) -> list[tuple]:
    return [(step, "attention of each block", "", _shape(maps[0]), f"one per block ({len(maps)}): batch, heads, queries, keys"),
            (step, "output tokens", "", _shape(tokens), note)]


def _php_rows(image_maps: dict, text_maps: dict, image_routing: list, text_routing: list,
              image_feats: torch.Tensor, text_feats: torch.Tensor) -> list[tuple]:
    rows = []
    for modality, maps, routing in (("image", image_maps, image_routing), ("text", text_maps, text_routing)):
        weights = maps[f"crfm_{modality}"][0]
        batch, cnum, _ = weights.shape
        dim = (image_feats if modality == "image" else text_feats).shape[-1]
        rows += [("CRFM", f"{modality} pooling weights", "A = softmax(U Xᵀ)", _shape(weights),
                  f"{cnum} unified tokens over the {modality} tokens" + (" (CLS excluded)" if modality == "image"
                                                                           else " (up to EOT)")),
                 ("CRFM", f"{modality} unified tokens", "FFN(A X / √D)", f"({batch}, {cnum}, {dim})", "EFP input")]
        for layer in routing:
            rows += [("EFP", f"{modality} layer {layer.layer} gate logits", "g", _shape(layer.gate_logits),
                      "(1-α) W_in z + α W_task c"),
                     ("EFP", f"{modality} layer {layer.layer} top-k experts", "T", _shape(layer.topk),
                      "expert ids, largest logit first"),
                     ("EFP", f"{modality} layer {layer.layer} routing weights", "w_e", _shape(layer.weights),
                      "softmax over the k chosen logits"),
                     ("EFP", f"{modality} layer {layer.layer} aux term", "Σ_e P_e f_e", "()",
                      f"{float(layer.aux):.4f} (k/E at balance)")]
    rows += [("global features", "image feature", "i = v_cls + mean EFP", _shape(image_feats), ""),
             ("global features", "text feature", "t = t_eot + mean EFP", _shape(text_feats), "")]
    return rows


def _irra_head_rows(cfg: Any, batch: dict, maps: dict, num_classes: int) -> list[tuple]:
    rows = []
    names = cfg.loss_names()
    size = batch["pids"].shape[0]
    if "id" in names:
        rows.append(("ID", "classifier logits", "W v_i, W t_i", f"({size}, {num_classes})",
                     "one class per training identity"))
    if "mlm" in names and "cross" in maps:
        masked = int((batch["mlm_labels"] != 0).sum())
        rows += [("MLM", "cross-attention text -> image", "", _shape(maps["cross"][0]),
                  "masked caption tokens query the image tokens"),
                 ("MLM", "vocabulary logits at masked positions", "", f"({masked}, {cfg.model.vocab_size})",
                  "cross-modal transformer -> mlm_head")]
    return rows


def sdm_targets_figure(walk: BatchWalkthrough, run_dir: str | Path, arch: str) -> Figure:
    """:func:`irra_core.viz.method.plot_sdm_targets` of the walkthrough's batch, saved as
    ``figures/NN_sdm_targets_<arch>.png``."""
    from irra_core.viz import save_figure
    from irra_core.viz.method import plot_sdm_targets

    fig = plot_sdm_targets(walk.pids, walk.logits)
    save_figure(fig, _figure_path(run_dir, arch, "sdm_targets"))
    return fig


def train_with_live_curves(cfg: Any, run_dir: str | Path, arch: str, *, resume: bool = True,
                           interactive: bool = False, every: int = 20,
                           alongside: tuple[str, Any] | None = None):
    """Train ``cfg`` into ``run_dir / arch`` (:func:`irra_core.engine.fit`) with a :class:`LiveCurves` callback.

    Args:
        alongside: ``(name, config)`` of a second run to train into ``run_dir / name`` at the same time, in a
            child process (:mod:`irra_core.alongside`), when :func:`~irra_core.alongside.plan_alongside` finds
            a CPU with two or more threads to share; elsewhere it is not trained here (its own notebook trains
            it) and a line says so. ``11_train_php`` passes notebook 40's batch-axis PHP
            (:func:`irra_core.workbook.audit_model_config`).

    Returns:
        ``(result, live)``: the :class:`irra_core.engine.FitResult` and the callback with its per-step record.

    A run alongside that fails does not fail this one: a warning quotes the end of its log as soon as it
    exits (:class:`~irra_core.alongside.AlongsideWatch`, which then gives this run all the threads), and its
    notebook resumes or retrains it.
    """
    from irra_core.alongside import AlongsideWatch, plan_alongside, training_alongside
    from irra_core.data.loaders import _dataset_for
    from irra_core.engine import fit
    from irra_core.viz.curves import LiveCurves

    _figure_path(run_dir, arch, "")  # validates the model name before a long run
    live = LiveCurves(interactive=interactive, every=every)
    callbacks: list[Any] = [live]
    plan = plan_alongside(resolve_device(cfg.train.device)) if alongside else None
    if alongside and plan is None:
        print(f"{alongside[0]}: not trained alongside ({resolve_device(cfg.train.device)}, "
              f"{torch.get_num_threads()} thread(s)); the notebook that needs it trains it", flush=True)
    with contextlib.ExitStack() as stack:
        if plan is not None:
            _dataset_for(cfg)  # prepared (or generated) here, before a second process reads it
            other = stack.enter_context(training_alongside(alongside[1], Path(run_dir) / alongside[0], plan,
                                                           warn=True))
            callbacks.append(AlongsideWatch(other, sum(plan)))
            print(f"training {arch} on {plan[0]} thread(s) here and {other.name} on {plan[1]} in a second "
                  f"process (log {other.log_path})", flush=True)
        result = fit(cfg, Path(run_dir) / arch, callbacks=callbacks, resume=resume)
        print(f"finished: epoch {result.last_epoch}, best epoch {result.best_epoch}, run folder {result.run_dir}")
    return result, live


def step_loss_figure(live: Any, run_dir: str | Path, arch: str) -> Figure:
    """The live callback's per-step losses (and epoch retrieval), saved as ``figures/NN_steps_<arch>.png``."""
    from irra_core.viz import save_figure

    fig = live.figure()
    save_figure(fig, _figure_path(run_dir, arch, "steps"))
    return fig


def epoch_curves_figure(run_dir: str | Path, arch: str) -> Figure:
    """Loss terms, validation retrieval and learning rate per epoch from ``<run>/<arch>/log.jsonl``, saved
    as ``figures/NN_curves_<arch>.png``."""
    from irra_core.viz import save_figure
    from irra_core.viz.curves import log_frame, plot_training_curves

    fig = plot_training_curves(log_frame(Path(run_dir) / arch), title=_TITLES.get(arch, arch))
    save_figure(fig, _figure_path(run_dir, arch, "curves"))
    return fig


def epoch_table(run_dir: str | Path, arch: str) -> pd.DataFrame:
    """One row per epoch of ``<run>/<arch>/log.jsonl``: lr, loss terms, validation t2i R1/mAP (percent),
    epoch time (seconds) and throughput (pairs per second)."""
    from irra_core.viz.curves import log_frame

    return log_frame(Path(run_dir) / arch).filter(regex=_EPOCH_COLUMNS).round(4)


def selected_checkpoint_metrics(result: Any) -> pd.DataFrame:
    """Prints how the checkpoint was selected; returns its test metrics (percent), rows t2i and i2t."""
    print(f"selection: {result.metrics['selection']}")
    return pd.DataFrame({task: result.metrics[task] for task in ("t2i", "i2t")}).T.round(2)
