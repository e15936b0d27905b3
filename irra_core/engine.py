"""``fit(cfg, run_dir)``: train IRRA or PHP, evaluate, select, and write the run folder.

One epoch = IRRA's loop (forward -> ``losses.total_loss`` (the weighted terms of ``cfg.loss``) -> their sum ->
backward -> step),
with what IRRA lacks as named options: autocast bf16/fp16 (+ gradient scaling for fp16), IRRA's pure-fp16
``legacy_fp16`` model, gradient accumulation (``train.grad_accum`` micro-batches per optimiser step),
optional clipping (``train.grad_clip``), multi-process training (torchrun, contrastive losses over the
global batch), seeds and a deterministic mode.

Every ``train.eval_period`` epochs (and after the last) the model is evaluated on the selection split:
``data.val_split`` by default, the test split with ``train.select_on: test`` (IRRA's behaviour).
``checkpoints/last.pt`` is written after every epoch and ``best.pt`` whenever t2i R1 improves. At the end
the best and the last checkpoints are evaluated on the test split; ``metrics.json`` reports the selected
one (``select_on: last`` selects the last) and both. A dataset without a validation split (ICFG-PEDES)
selects the last epoch under the default ``select_on: val`` and says so (printed, and in ``metrics.json``'s
``selection``); ``data.val_from_train: N`` holds N training identities out as a real validation split
(listed in the run folder's ``val_from_train.json``). See :func:`resolve_selection`.

A start that fails before the first training step (a bad dataset, weights that cannot be loaded) removes
the run folder it created, so no empty run is left behind; a folder that existed before is never removed.

A killed run restarts from ``last.pt`` with ``resume=True``: finished epochs are kept, and on the CPU with
``train.deterministic`` the resumed run retraces the uninterrupted one exactly (tests/test_resume.py).
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from irra_core import losses
from irra_core.checkpoint import load_checkpoint, restore_training_state, save_checkpoint, unwrap_model
from irra_core.config import Config
from irra_core.distributed import (DistInfo, all_reduce_sum, barrier, cleanup_distributed, gather_batch,
                                   init_distributed)
from irra_core.optim import build_optimizer
from irra_core.runs import RunDir, environment_info
from irra_core.runtime import device_type, resolve_device, tune_cpu
from irra_core.scheduler import build_scheduler
from irra_core.train_progress import EpochMeter, Progress

__all__ = ["fit", "FitResult", "TrainState", "Selection", "resolve_selection", "seed_everything",
           "SELECTION_METRIC"]

#: what "best" means, as in IRRA: text-to-image Rank-1 on the selection split
SELECTION_METRIC = ("t2i", "R1")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainState:
    """What callbacks see. Set ``stop = True`` in a callback to end training after the current step/epoch."""

    cfg: Config
    run: RunDir
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    num_epoch: int
    steps_per_epoch: int
    epoch: int = 0  # current (1-based) epoch; after on_epoch_end, the finished one
    step: int = 0  # optimiser steps taken in the whole run
    epoch_step: int = 0  # optimiser steps taken in this epoch
    outputs: dict = field(default_factory=dict)  # last step's scalar outputs (losses, accuracies)
    lr: float = 0.0
    record: dict = field(default_factory=dict)  # the epoch's log.jsonl line (at on_epoch_end)
    eval_metrics: dict | None = None  # the last evaluation {"t2i": ..., "i2t": ...}
    best_epoch: int | None = None
    best_score: float | None = None
    stop: bool = False


@dataclass
class FitResult:
    """What :func:`fit` returns. ``model`` holds the selected checkpoint's weights."""

    run_dir: Path
    metrics: dict
    best_epoch: int | None
    last_epoch: int
    best_checkpoint: Path | None
    last_checkpoint: Path
    log: list[dict]
    model: nn.Module | None = None


# ------------------------------------------------------------------------------------------------------
# set-up helpers
# ------------------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@contextlib.contextmanager
def _deterministic(enabled: bool):
    """``torch.use_deterministic_algorithms``, the cuDNN flags and ``CUBLAS_WORKSPACE_CONFIG`` for the duration of
    the run, then restored (also on error).

    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (deterministic cuBLAS needs it) is set only when unset and removed again
    afterwards. cuBLAS reads it when a handle is created, so a handle made during the run keeps its workspace
    setting for the rest of the process (harmless: a fixed workspace only costs a little memory).
    """
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                torch.backends.cudnn.benchmark)
    previous_cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[1], previous[2]
        if previous_cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def _check_precision(cfg: Config, device: torch.device) -> None:
    precision = cfg.model.precision
    if device.type != "cpu":
        return
    if precision == "legacy_fp16":
        warnings.warn("model.precision = 'legacy_fp16' on the CPU: IRRA's pure-fp16 Adam is meant for GPUs; "
                      "fp16 kernels on the CPU are very slow and only useful for parity checks", stacklevel=3)
    elif precision in ("bf16", "fp16"):
        warnings.warn(f"model.precision = {precision!r} on the CPU is slower than fp32 (no {precision} hardware "
                      f"here, see ENVIRONMENT.md); use fp32 for CPU runs", stacklevel=3)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _set_epoch(loader, epoch: int) -> None:
    """Tell the loader's sampler (or batch sampler) which epoch it serves, so shuffles differ per epoch."""
    for holder in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if holder is not None and hasattr(holder, "set_epoch"):
            holder.set_epoch(epoch)
            return
        inner = getattr(holder, "sampler", None)
        if inner is not None and hasattr(inner, "set_epoch"):
            inner.set_epoch(epoch)
            return


def _call(callbacks: Iterable[Any], hook: str, state: TrainState) -> None:
    for callback in callbacks:
        fn = getattr(callback, hook, None)
        if fn is not None:
            fn(state)


# ------------------------------------------------------------------------------------------------------
# fit
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Selection:
    """How a run picks its reported checkpoint (``metrics.json``'s ``selection``).

    ``policy``: ``val`` | ``test`` | ``last`` (the one in effect); ``requested``: ``train.select_on``;
    ``split``: the split evaluated during training (None: no evaluation until the end); ``note``: why the
    policy differs from the requested one, or what it implies ("" when nothing needs saying).
    """

    policy: str
    requested: str
    split: str | None
    note: str = ""


def _has_split(dataset: Any, split: str) -> bool:
    data = getattr(dataset, split, None)
    return bool(data and len(data.get("captions", [])) and len(data.get("img_paths", [])))


def resolve_selection(cfg: Config, dataset: Any) -> Selection:
    """The selection policy for ``cfg`` on ``dataset`` (correct by default, SPEC Q2).

    * ``select_on: val`` selects on ``data.val_split``; when the dataset has no validation split (ICFG-PEDES)
      the last epoch is selected instead, with a note naming the two alternatives: ``data.val_from_train``
      (a validation split held out of training) and ``select_on: test`` (IRRA).
    * ``select_on: test`` selects on the test split (IRRA's behaviour; the reported numbers are optimistic).
    * ``select_on: last`` selects the last epoch; a val split, when there is one, is still evaluated for
      the curves.

    Raises:
        DatasetError: the test split is empty, or ``data.val_split`` names an empty split explicitly.
    """
    from irra_core.data.errors import DatasetError

    name = getattr(dataset, "name", cfg.data.dataset)
    if not _has_split(dataset, "test"):
        raise DatasetError(f"the test split of {name!r} is empty; a run needs one to report its metrics "
                           f"(check the annotation file's 'split' fields)")
    requested = cfg.train.select_on
    if requested == "test":
        return Selection("test", requested, "test", "selected on the test split (IRRA's behaviour, "
                                                    "train.select_on=test): the reported numbers are optimistic")
    split = cfg.data.val_split
    if _has_split(dataset, split):
        return Selection(requested, requested, split)
    if requested == "last":
        return Selection("last", requested, None)
    if split != "val":
        raise DatasetError(f"data.val_split={split!r} but the {split} split of {name!r} is empty")
    return Selection("last", requested, None,
                     f"{name} has no validation split, so the last epoch is selected (train.select_on=val "
                     f"cannot apply); set data.val_from_train=N to hold N training identities out as a "
                     f"validation split, or train.select_on=test to select on the test split as IRRA did")


def _evaluate(model: nn.Module, cfg: Config, split: str, device: torch.device, out_dir: Path | None,
              cache_dir: Path | None = None) -> dict:
    from irra_core.evaluation import evaluate

    module = unwrap_model(model)
    was_training = module.training
    try:
        metrics = evaluate(module, cfg, split, device=device, out_dir=out_dir, cache_dir=cache_dir)
    finally:
        module.train(was_training)
    return {"t2i": dict(metrics["t2i"]), "i2t": dict(metrics.get("i2t") or {})}


def fit(cfg: Config, run_dir: str | Path, *, callbacks: Iterable[Any] = (), resume: bool = True,
        dataset: Any = None, model: nn.Module | None = None) -> FitResult:
    """Train ``cfg`` into ``run_dir`` (created, or resumed from ``checkpoints/last.pt``).

    Args:
        cfg: the resolved configuration (:func:`irra_core.config.load_config`).
        run_dir: the run folder (``outputs/runs/<run>/irra`` ...). An existing folder is continued only
            with ``resume=True`` and the same config (see :class:`irra_core.runs.RunDir`).
        callbacks: objects with optional ``on_step(state)``, ``on_eval(state)``, ``on_epoch_end(state)``
            (:class:`TrainState`); on the main process only.
        resume: continue an existing run from its last checkpoint.
        dataset: a prepared :class:`irra_core.data.PedesDataset` (default: ``prepare_dataset(cfg)``).
        model: a built model (default: ``build_model(cfg, dataset.num_classes)``); trained in place.

    Returns:
        :class:`FitResult` with the final metrics (also in ``metrics.json``), checkpoints and log lines.

    Tunes the process for CPU work once (:func:`irra_core.runtime.tune_cpu`: the C allocator, CPU steps several
    times faster, and flush-to-zero, IRRA steps 2x faster on Intel CPUs; ``IRRA_MALLOC_TUNING=0`` and
    ``IRRA_FLUSH_DENORMALS=0`` opt out).
    """
    tune_cpu()
    callbacks = list(callbacks)
    started_group = not torch.distributed.is_initialized()
    dist_info = init_distributed(device_type(cfg.train.device))
    run_dir = Path(run_dir)
    fresh = not run_dir.exists()
    progress = {"training": False}  # set by _fit once the first step is about to run
    try:
        with _deterministic(cfg.train.deterministic):
            return _fit(cfg, run_dir, callbacks, resume, dataset, model, dist_info, progress)
    except Exception:
        if fresh and not progress["training"] and dist_info.is_main and run_dir.is_dir():
            shutil.rmtree(run_dir, ignore_errors=True)  # this start made it and nothing ran: leave nothing
        raise
    finally:
        if started_group and dist_info.enabled:
            cleanup_distributed()


@dataclass
class _Loop:
    """What the epochs of one run share, built once by :func:`_build_loop` (MAE's engine arguments, bundled)."""

    cfg: Config
    run: RunDir
    device: torch.device
    dist_info: DistInfo
    model: nn.Module  # the bare model (checkpoints, evaluation)
    train_model: nn.Module  # the model the steps run through (DDP-wrapped under torchrun, after the resume)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    loader: Any
    state: TrainState
    progress: Progress
    callbacks: list  # the main process's callbacks ([] on the other ranks)
    accum: int  # micro-batches per optimiser step
    gather: Any  # losses.total_loss's distributed gather (None on one process)
    loss_weights: dict
    autocast_dtype: Any
    eval_split: str | None

    def reached_max_steps(self) -> bool:
        return bool(self.cfg.train.max_steps and self.state.step >= self.cfg.train.max_steps)


def _fit(cfg: Config, run_dir: Path, callbacks: list, resume: bool, dataset: Any, model: nn.Module | None,
         dist_info: DistInfo, progress_flag: dict) -> FitResult:
    """The run on one screen: set up, resume, then per epoch train -> evaluate and select -> save."""
    device = resolve_device(cfg.train.device, dist_info.local_rank if dist_info.enabled else None)
    _check_precision(cfg, device)
    run, init_notes = _open_run(cfg, run_dir, resume, device, dist_info)
    seed_everything(cfg.train.seed)  # the model's initial weights are the same on every rank
    dataset, selection = _prepare_data(cfg, run, dataset, dist_info)
    loop = _build_loop(cfg, run, dataset, model, resume, init_notes, device, dist_info, callbacks, selection)
    finished = resume_training(loop, resume) or loop.reached_max_steps()
    if dist_info.enabled:  # wrapped after the resume, so every rank starts from the restored weights
        loop.train_model = nn.parallel.DistributedDataParallel(
            loop.model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False,
            find_unused_parameters=loop.model.find_unused_parameters)
    progress_flag["training"] = True
    epoch = loop.state.epoch + 1
    while not finished and epoch <= cfg.train.num_epoch:
        record, stopping = train_one_epoch(loop, epoch)
        improved = evaluate_and_select(loop, record, stopping)
        save_epoch(loop, record, improved, stopping)
        _call(loop.callbacks, "on_epoch_end", loop.state)
        if stopping or _any_rank(loop.state.stop, device):
            break
        epoch += 1
    if cfg.optim.sparse_embedding:  # the returned model has dense gradients again
        from irra_core.optim import set_sparse_embeddings

        set_sparse_embeddings(loop.model, False)
    return _finish(loop, selection)


def _open_run(cfg: Config, run_dir: Path, resume: bool, device: torch.device,
              dist_info: DistInfo) -> tuple[RunDir, list[str]]:
    """Open (or check) the run folder on the main process first, so the others never see it half-made."""
    init_notes = _resolve_init(cfg, run_dir, resume)
    if dist_info.is_main:
        run = RunDir.open(run_dir, cfg, resume=resume)
        run.record_environment(environment_info(str(device), dist_info.world_size))
    barrier()
    if not dist_info.is_main:
        run = RunDir(run_dir)
    return run, init_notes


def _prepare_data(cfg: Config, run: RunDir, dataset: Any, dist_info: DistInfo) -> tuple[Any, Selection]:
    """The dataset (prepared on the main process first) and the selection policy, reported once."""
    from irra_core.data import prepare_dataset

    main = dist_info.is_main
    if dataset is None:
        if main:
            dataset = prepare_dataset(cfg)  # generates the synthetic set once
        barrier()
        if not main:
            dataset = prepare_dataset(cfg)
    selection = resolve_selection(cfg, dataset)
    if main:
        if selection.note:
            print(f"selection: {selection.note}", flush=True)
        if getattr(dataset, "val_from_train", None):
            from irra_core.io_utils import atomic_write_json

            atomic_write_json(run.path / "val_from_train.json", dataset.val_from_train)
        if getattr(dataset, "subset", None):
            print(f"data: {dataset.name} cut to its first {dataset.subset['max_identities']} identities per split "
                  f"(data.max_identities): {dataset.subset['identities']} of {dataset.subset['of']}", flush=True)
    return dataset, selection


def _use_sparse_embeddings(cfg: Config, model: nn.Module, dist_info: DistInfo) -> None:
    """``optim.sparse_embedding``: row-sparse token-embedding gradients for :class:`irra_core.optim.RowSparseAdamW`
    unless :func:`irra_core.optim.sparse_embedding_blockers` names a reason to keep them dense (RowSparseAdamW
    then steps exactly as AdamW); the main process says so."""
    from irra_core.optim import set_sparse_embeddings, sparse_embedding_blockers

    blockers = sparse_embedding_blockers(cfg, distributed=dist_info.enabled)
    if blockers:
        if dist_info.is_main:
            print(f"optim.sparse_embedding: dense gradients under {', '.join(blockers)} (same result, no speed-up)")
        return
    set_sparse_embeddings(model)


def _build_loop(cfg: Config, run: RunDir, dataset: Any, model: nn.Module | None, resume: bool,
                init_notes: list[str], device: torch.device, dist_info: DistInfo, callbacks: list,
                selection: Selection) -> _Loop:
    """Model (built or fine-tuned from ``model.init_from``), optimiser, loader, scheduler, scaler, DDP."""
    from irra_core.data import build_train_loader

    main = dist_info.is_main
    if model is None:
        from irra_core.model import build_model

        model = build_model(cfg, dataset.num_classes)
    if cfg.model.init_from and not (resume and run.last_checkpoint.exists()):  # resuming wins over init
        from irra_core.model.load import init_from_checkpoint

        report = init_from_checkpoint(model, cfg.model.init_from, notes=init_notes)
        if main:
            report.write(run.path / "init_report.json")
            print(report.summary())
    model.to(device)
    if cfg.optim.sparse_embedding:
        _use_sparse_embeddings(cfg, model, dist_info)
    optimizer = build_optimizer(model, cfg.optim)
    seed_everything(cfg.train.seed + dist_info.rank)  # data order and augmentation differ per rank
    loader = build_train_loader(cfg, dataset, rank=dist_info.rank, world_size=dist_info.world_size)
    if cfg.model.mlm_vocab == "train" and "mlm" in cfg.loss_names():
        size = model.restrict_mlm_vocabulary(loader.dataset.caption_ids)
        if main:
            print(f"MLM softmax over the {size} tokens of the training captions (model.mlm_vocab: train)")
    accum = max(1, cfg.train.grad_accum)
    steps_per_epoch = math.ceil(len(loader) / accum)
    scheduler = build_scheduler(optimizer, cfg.optim, total_epochs=cfg.train.num_epoch,
                                steps_per_epoch=steps_per_epoch)
    state = TrainState(cfg=cfg, run=run, model=model, optimizer=optimizer, scheduler=scheduler,
                       num_epoch=cfg.train.num_epoch, steps_per_epoch=steps_per_epoch)
    return _Loop(cfg=cfg, run=run, device=device, dist_info=dist_info, model=model, train_model=model,
                 optimizer=optimizer, scheduler=scheduler,
                 scaler=torch.amp.GradScaler(device.type, enabled=cfg.model.precision == "fp16"),
                 loader=loader, state=state, progress=Progress(cfg.train.progress, cfg.train.log_period, enabled=main),
                 callbacks=callbacks if main else [], accum=accum,
                 gather=gather_batch if dist_info.enabled else None, loss_weights=cfg.loss_weights(),
                 autocast_dtype=_AUTOCAST.get(cfg.model.precision), eval_split=selection.split)


def resume_training(loop: _Loop, resume: bool) -> bool:
    """Restore model, optimiser, scheduler, scaler, RNG and counters from ``last.pt`` (``resume=True``); trim
    ``log.jsonl`` to the finished epochs. Returns whether the checkpointed run had already finished."""
    run, state, finished = loop.run, loop.state, False
    if resume and run.last_checkpoint.exists():
        ckpt = load_checkpoint(run.last_checkpoint, map_location=loop.device)
        restore_training_state(ckpt, model=loop.model, optimizer=loop.optimizer, scheduler=loop.scheduler,
                               scaler=loop.scaler)
        extra = ckpt.get("extra", {})
        state.epoch, state.step = ckpt["epoch"], ckpt["iteration"]
        state.best_epoch, state.best_score = extra.get("best_epoch"), extra.get("best_score")
        finished = bool(extra.get("finished"))
        if loop.dist_info.is_main:
            run.trim_log(ckpt["epoch"])
            _repair_best(run, state.best_epoch)
        del ckpt
    elif loop.dist_info.is_main:
        run.trim_log(0)  # killed in epoch 1 (maybe after its log line): nothing finished, start clean
    barrier()
    return finished


def train_one_epoch(loop: _Loop, epoch: int) -> tuple[dict, bool]:
    """IRRA's epoch: forward -> weighted loss terms -> backward -> step, in ``loop.accum`` micro-batches.

    Returns the epoch's ``log.jsonl`` record (lr at the start, mean terms, pairs/s, seconds) and whether
    training stops after this epoch (last epoch, ``train.max_steps`` reached or a callback's stop).
    """
    cfg, state, optimizer, loader = loop.cfg, loop.state, loop.optimizer, loop.loader
    state.epoch, state.epoch_step = epoch, 0
    _set_epoch(loader, epoch)
    loop.train_model.train()
    meter = EpochMeter()
    lr_at_start = optimizer.param_groups[0]["lr"]
    loop.progress.start_epoch(epoch, cfg.train.num_epoch, state.steps_per_epoch)
    tic = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    num_batches = len(loader)
    for index, batch in enumerate(loader):
        group_start = (index // loop.accum) * loop.accum
        group_size = min(loop.accum, num_batches - group_start)
        last_in_group = index == group_start + group_size - 1
        scalars = _forward_backward(loop, _to_device(batch, loop.device), meter, group_size, last_in_group, index)
        if not last_in_group:
            continue
        _optimizer_step(loop, scalars)
        if loop.reached_max_steps() or _any_rank(state.stop, loop.device):
            break
    train_time = time.perf_counter() - tic
    if cfg.optim.scheduler_step == "epoch":
        loop.scheduler.step()
    summary = meter.summary(loop.device)
    routing, samples = summary.pop("routing", None), summary.pop("samples")
    stopping = loop.reached_max_steps() or state.stop or epoch == cfg.train.num_epoch
    record = {"epoch": epoch, "step": state.step, "lr": lr_at_start, **summary,
              "pairs_per_s": samples / train_time if train_time > 0 else float("nan"),
              "epoch_time_s": train_time, "samples": samples}
    if state.epoch_step < state.steps_per_epoch:
        record["partial_epoch"] = True
    if routing is not None:
        record["routing"] = routing
    return record, bool(stopping)


def _forward_backward(loop: _Loop, batch: dict, meter: EpochMeter, group_size: int, last_in_group: bool,
                      index: int) -> dict:
    """One micro-batch: autocast forward, ``losses.total_loss``, scaled backward (DDP syncs on the group's
    last micro-batch only). Returns the batch's scalars as the meter saw them.

    Raises:
        FloatingPointError: the summed loss is not finite (names the epoch, batch and each term).
    """
    dtype = loop.autocast_dtype
    sync = contextlib.nullcontext() if (last_in_group or not loop.dist_info.enabled) else loop.train_model.no_sync()
    with sync:
        with torch.autocast(loop.device.type, dtype=dtype, enabled=dtype is not None):
            outputs = loop.train_model(batch)
            terms = losses.total_loss(outputs, batch, loop.loss_weights, gather=loop.gather)
        total = sum(terms.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"non-finite loss {float(total)} at epoch {loop.state.epoch}, batch {index} "
                                     f"({ {k: float(v) for k, v in terms.items()} })")
        loop.scaler.scale(total / group_size).backward()
    return meter.update({**losses.batch_metrics(outputs, batch), **terms}, int(batch["pids"].shape[0]))


def _optimizer_step(loop: _Loop, scalars: dict) -> None:
    """Clip (``train.grad_clip``), step, advance the scheduler (per iteration) and tell the callbacks."""
    cfg, state, optimizer, scaler = loop.cfg, loop.state, loop.optimizer, loop.scaler
    if cfg.train.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(loop.model.parameters(), cfg.train.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.epoch_step += 1
    state.lr = optimizer.param_groups[0]["lr"]
    if cfg.optim.scheduler_step == "iteration":
        loop.scheduler.step()
    state.outputs = scalars
    loop.progress.step(state.epoch, state.epoch_step, state.steps_per_epoch, scalars, state.lr)
    _call(loop.callbacks, "on_step", state)


def evaluate_and_select(loop: _Loop, record: dict, stopping: bool) -> bool:
    """Every ``train.eval_period`` epochs (and after the last) evaluate on the selection split (main process)
    and keep the best t2i R1 (strictly better, as IRRA). Adds ``eval`` and ``best_epoch`` to ``record``;
    returns whether this epoch improved."""
    cfg, state, epoch, improved = loop.cfg, loop.state, record["epoch"], False
    due = epoch % max(1, cfg.train.eval_period) == 0 or stopping
    if loop.dist_info.is_main and loop.eval_split is not None and due:
        state.eval_metrics = _evaluate(loop.model, cfg, loop.eval_split, loop.device, None)
        record["eval"] = {"split": loop.eval_split, **state.eval_metrics}
        score = state.eval_metrics[SELECTION_METRIC[0]][SELECTION_METRIC[1]]
        if state.best_score is None or score > state.best_score:  # strict, as IRRA
            state.best_score, state.best_epoch, improved = score, epoch, True
        _call(loop.callbacks, "on_eval", state)
    record["best_epoch"] = state.best_epoch
    state.record = record
    return improved


def save_epoch(loop: _Loop, record: dict, improved: bool, stopping: bool) -> None:
    """Main process: append ``record`` to ``log.jsonl``, write ``last.pt`` (and copy it to ``best.pt`` when
    the epoch improved); every rank then waits at a barrier."""
    run, state = loop.run, loop.state
    if loop.dist_info.is_main:
        run.log(record)
        extra = {"best_epoch": state.best_epoch, "best_score": state.best_score, "finished": stopping,
                 "selection_split": loop.eval_split}
        save_checkpoint(run.last_checkpoint, model=loop.model, optimizer=loop.optimizer, scheduler=loop.scheduler,
                        scaler=loop.scaler, epoch=record["epoch"], iteration=state.step, config=loop.cfg.to_dict(),
                        extra=extra)
        if improved:
            _copy_atomic(run.last_checkpoint, run.best_checkpoint)
        loop.progress.end_epoch(record)
    barrier()


def _finish(loop: _Loop, selection: Selection) -> FitResult:
    """Evaluate best and last on the test split (main process), then every rank returns the same result."""
    run, main = loop.run, loop.dist_info.is_main
    metrics = None
    if main:
        metrics = _final_report(loop.cfg, run, loop.model, loop.device, selection)
    barrier()
    if not main:
        metrics = run.read_metrics() if run.metrics_path.exists() else {}
    best = metrics.get("best") or {}
    return FitResult(run_dir=run.path, metrics=metrics, best_epoch=best.get("epoch"),
                     last_epoch=metrics.get("last", {}).get("epoch", loop.state.epoch),
                     best_checkpoint=run.best_checkpoint if run.best_checkpoint.exists() else None,
                     last_checkpoint=run.last_checkpoint, log=run.read_log(), model=loop.model)


def _resolve_init(cfg: Config, run_dir: Path, resume: bool) -> list[str]:
    """Fine-tuning (``model.init_from``): give ``cfg`` the checkpoint's sizes before the run folder is opened."""
    if not cfg.model.init_from:
        return []
    from irra_core.model.load import resolve_init_config

    saved = None
    if resume and (run_dir / "config.yaml").exists():
        saved = RunDir(run_dir).load_config()
    return resolve_init_config(cfg, saved=saved)


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is set on any rank (a callback's stop request must stop every rank)."""
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=device)).item() > 0)


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _repair_best(run: RunDir, best_epoch: int | None) -> None:
    """A kill between writing last.pt and copying it to best.pt leaves best.pt one improvement behind."""
    if best_epoch is None or not run.last_checkpoint.exists():
        return
    last_epoch = load_checkpoint(run.last_checkpoint)["epoch"]
    best_on_disk = load_checkpoint(run.best_checkpoint)["epoch"] if run.best_checkpoint.exists() else None
    if best_on_disk != best_epoch and last_epoch == best_epoch:
        _copy_atomic(run.last_checkpoint, run.best_checkpoint)


def _final_report(cfg: Config, run: RunDir, model: nn.Module, device: torch.device, selection: Selection) -> dict:
    """Evaluate best and last on the test split, write ``metrics.json`` (reused when already written) and
    leave the selected checkpoint's weights in ``model``."""
    last_state = load_checkpoint(run.last_checkpoint, map_location=device)
    last_epoch = last_state["epoch"]
    best_epoch = last_state.get("extra", {}).get("best_epoch")
    use_best = selection.policy != "last" and best_epoch is not None and run.best_checkpoint.exists()
    module = unwrap_model(model)
    best_state = None
    if best_epoch is not None and run.best_checkpoint.exists() and best_epoch != last_epoch:
        best_state = load_checkpoint(run.best_checkpoint, map_location=device)
    selected_state = best_state if use_best and best_state is not None else last_state
    if run.metrics_path.exists():
        metrics = run.read_metrics()
        if metrics.get("last", {}).get("epoch") == last_epoch:
            module.load_state_dict(selected_state["model"])
            return metrics
    module.load_state_dict(last_state["model"])
    # test embeddings go to the run's cache, where notebooks 20-40 find them (keyed by the weights' fingerprint)
    cache = run.path / "cache"
    last_test = _evaluate(module, cfg, "test", device, run.eval_dir("last_test"), cache)
    best = None
    if best_epoch is not None and run.best_checkpoint.exists():
        if best_state is None:  # the best checkpoint is the last one
            best_test = last_test
        else:
            module.load_state_dict(best_state["model"])
            best_test = _evaluate(module, cfg, "test", device, run.eval_dir("best_test"), cache)
        val = next((r["eval"] for r in run.read_log() if r.get("epoch") == best_epoch and "eval" in r), None)
        best = {"epoch": best_epoch, "val": {k: v for k, v in (val or {}).items() if k in ("t2i", "i2t")},
                "test": best_test}
    selected = best["test"] if use_best and best is not None else last_test
    metrics = {"t2i": selected["t2i"], "i2t": selected["i2t"], "best": best,
               "last": {"epoch": last_epoch, "test": last_test},
               "selection": {"policy": selection.policy, "requested": selection.requested,
                             "split": selection.split if selection.policy != "last" else None,
                             "metric": ".".join(SELECTION_METRIC),
                             "epoch": best_epoch if use_best and best is not None else last_epoch,
                             "note": selection.note}}
    run.write_metrics(metrics)
    module.load_state_dict(selected_state["model"])
    return metrics
