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
from irra_core.runtime import tune_allocator
from irra_core.scheduler import build_scheduler
from irra_core.train_progress import EpochMeter, Progress

__all__ = ["fit", "FitResult", "TrainState", "Selection", "resolve_selection", "seed_everything", "resolve_device",
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
    """``torch.use_deterministic_algorithms`` and cuDNN flags for the duration of the run, then restored."""
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[1], previous[2]


def resolve_device(name: str, dist_info: DistInfo | None = None) -> torch.device:
    """``auto`` -> ``cuda`` when available (``cuda:<local_rank>`` under torchrun), else ``cpu``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    from irra_core.config import ConfigError

    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device = {name!r} but no CUDA device is available; use 'cpu' or 'auto'")
        if name == "cuda" and dist_info is not None and dist_info.enabled:
            name = f"cuda:{dist_info.local_rank}"
    elif name != "cpu":
        raise ConfigError(f"train.device = {name!r}; choose auto, cpu, cuda or cuda:N")
    return torch.device(name)


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


def _evaluate(model: nn.Module, cfg: Config, split: str, device: torch.device, out_dir: Path | None) -> dict:
    from irra_core.evaluation import evaluate

    module = unwrap_model(model)
    was_training = module.training
    try:
        metrics = evaluate(module, cfg, split, device=device, out_dir=out_dir)
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

    Tunes the process's C allocator once (:func:`irra_core.runtime.tune_allocator`: CPU steps several times
    faster; ``IRRA_MALLOC_TUNING=0`` opts out).
    """
    tune_allocator()
    callbacks = list(callbacks)
    started_group = not torch.distributed.is_initialized()
    dist_info = init_distributed(cfg.train.device if cfg.train.device != "auto" else
                                 ("cuda" if torch.cuda.is_available() else "cpu"))
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


def _fit(cfg: Config, run_dir: Path, callbacks: list, resume: bool, dataset: Any, model: nn.Module | None,
         dist_info: DistInfo, progress_flag: dict) -> FitResult:
    from irra_core.data import build_train_loader, prepare_dataset

    device = resolve_device(cfg.train.device, dist_info)
    _check_precision(cfg, device)
    main = dist_info.is_main
    init_notes = _resolve_init(cfg, run_dir, resume)
    # the main process creates (or checks) the folder first, so the others never see it half-made
    if main:
        run = RunDir.open(run_dir, cfg, resume=resume)
        run.record_environment(environment_info(str(device), dist_info.world_size))
    barrier()
    if not main:
        run = RunDir(run_dir)

    # the model's initial weights are the same on every rank; data order and augmentation differ per rank
    seed_everything(cfg.train.seed)
    if dataset is None:
        if main:
            dataset = prepare_dataset(cfg)  # generates the synthetic set once
        barrier()
        if not main:
            dataset = prepare_dataset(cfg)
    selection = resolve_selection(cfg, dataset)
    eval_split = selection.split
    if main:
        if selection.note:
            print(f"selection: {selection.note}", flush=True)
        if getattr(dataset, "val_from_train", None):
            from irra_core.io_utils import atomic_write_json

            atomic_write_json(run.path / "val_from_train.json", dataset.val_from_train)
        if getattr(dataset, "subset", None):
            print(f"data: {dataset.name} cut to its first {dataset.subset['max_identities']} identities per split "
                  f"(data.max_identities): {dataset.subset['identities']} of {dataset.subset['of']}", flush=True)

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
    optimizer = build_optimizer(model, cfg.optim)
    seed_everything(cfg.train.seed + dist_info.rank)
    loader = build_train_loader(cfg, dataset, rank=dist_info.rank, world_size=dist_info.world_size)
    accum = max(1, cfg.train.grad_accum)
    steps_per_epoch = math.ceil(len(loader) / accum)
    scheduler = build_scheduler(optimizer, cfg.optim, total_epochs=cfg.train.num_epoch,
                                steps_per_epoch=steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.model.precision == "fp16")

    state = TrainState(cfg=cfg, run=run, model=model, optimizer=optimizer, scheduler=scheduler,
                       num_epoch=cfg.train.num_epoch, steps_per_epoch=steps_per_epoch)
    start_epoch, finished = 1, False
    if resume and run.last_checkpoint.exists():
        ckpt = load_checkpoint(run.last_checkpoint, map_location=device)
        restore_training_state(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
        extra = ckpt.get("extra", {})
        start_epoch, state.step = ckpt["epoch"] + 1, ckpt["iteration"]
        state.epoch = ckpt["epoch"]
        state.best_epoch, state.best_score = extra.get("best_epoch"), extra.get("best_score")
        finished = bool(extra.get("finished"))
        if main:
            run.trim_log(ckpt["epoch"])
            _repair_best(run, state.best_epoch)
        del ckpt
    elif main:
        run.trim_log(0)  # killed in epoch 1 (maybe after its log line): nothing finished, start clean
    barrier()

    train_model: nn.Module = model
    if dist_info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False,
            find_unused_parameters=model.find_unused_parameters)
    progress = Progress(cfg.train.progress, cfg.train.log_period, enabled=main)
    main_callbacks = callbacks if main else []
    gather = gather_batch if dist_info.enabled else None
    loss_weights = cfg.loss_weights()
    autocast_dtype = _AUTOCAST.get(cfg.model.precision)
    max_steps = cfg.train.max_steps
    if max_steps and state.step >= max_steps:
        finished = True

    epoch = start_epoch
    progress_flag["training"] = True
    while not finished and epoch <= cfg.train.num_epoch:
        state.epoch, state.epoch_step = epoch, 0
        _set_epoch(loader, epoch)
        train_model.train()
        meter = EpochMeter()
        lr_at_start = optimizer.param_groups[0]["lr"]
        num_batches = len(loader)
        progress.start_epoch(epoch, cfg.train.num_epoch, steps_per_epoch)
        tic = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for index, batch in enumerate(loader):
            group_start = (index // accum) * accum
            group_size = min(accum, num_batches - group_start)
            last_in_group = index == group_start + group_size - 1
            batch = _to_device(batch, device)
            sync = contextlib.nullcontext() if (last_in_group or not dist_info.enabled) else train_model.no_sync()
            with sync:
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    outputs = train_model(batch)
                    terms = losses.total_loss(outputs, batch, loss_weights, gather=gather)
                total = sum(terms.values())
                if not torch.isfinite(total):
                    raise FloatingPointError(f"non-finite loss {float(total)} at epoch {epoch}, batch {index} "
                                             f"({ {k: float(v) for k, v in terms.items()} })")
                scaler.scale(total / group_size).backward()
            scalars = meter.update({**losses.batch_metrics(outputs, batch), **terms}, int(batch["pids"].shape[0]))
            if not last_in_group:
                continue
            if cfg.train.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.epoch_step += 1
            state.lr = optimizer.param_groups[0]["lr"]
            if cfg.optim.scheduler_step == "iteration":
                scheduler.step()
            state.outputs = scalars
            progress.step(epoch, state.epoch_step, steps_per_epoch, scalars, state.lr)
            _call(main_callbacks, "on_step", state)
            if (max_steps and state.step >= max_steps) or _any_rank(state.stop, device):
                break
        train_time = time.perf_counter() - tic
        if cfg.optim.scheduler_step == "epoch":
            scheduler.step()
        summary = meter.summary(device)
        routing = summary.pop("routing", None)
        samples = summary.pop("samples")
        stopping = bool((max_steps and state.step >= max_steps) or state.stop or epoch == cfg.train.num_epoch)
        record = {"epoch": epoch, "step": state.step, "lr": lr_at_start, **summary,
                  "pairs_per_s": samples / train_time if train_time > 0 else float("nan"),
                  "epoch_time_s": train_time, "samples": samples}
        if state.epoch_step < steps_per_epoch:
            record["partial_epoch"] = True
        if routing is not None:
            record["routing"] = routing

        # evaluation and selection (main process; the others wait)
        improved = False
        if main and eval_split is not None and (epoch % max(1, cfg.train.eval_period) == 0 or stopping):
            state.eval_metrics = _evaluate(model, cfg, eval_split, device, None)
            record["eval"] = {"split": eval_split, **state.eval_metrics}
            score = state.eval_metrics[SELECTION_METRIC[0]][SELECTION_METRIC[1]]
            if state.best_score is None or score > state.best_score:  # strict, as IRRA
                state.best_score, state.best_epoch, improved = score, epoch, True
            _call(main_callbacks, "on_eval", state)
        record["best_epoch"] = state.best_epoch
        state.record = record
        if main:
            run.log(record)
            extra = {"best_epoch": state.best_epoch, "best_score": state.best_score, "finished": stopping,
                     "selection_split": eval_split}
            save_checkpoint(run.last_checkpoint, model=model, optimizer=optimizer, scheduler=scheduler,
                            scaler=scaler, epoch=epoch, iteration=state.step, config=cfg.to_dict(), extra=extra)
            if improved:
                _copy_atomic(run.last_checkpoint, run.best_checkpoint)
            progress.end_epoch(record)
        barrier()
        _call(main_callbacks, "on_epoch_end", state)
        if stopping or _any_rank(state.stop, device):
            break
        epoch += 1

    metrics = None
    if main:
        metrics = _final_report(cfg, run, model, device, selection)
    barrier()
    if not main:
        metrics = run.read_metrics() if run.metrics_path.exists() else {}
    best = metrics.get("best") or {}
    return FitResult(run_dir=run.path, metrics=metrics, best_epoch=best.get("epoch"),
                     last_epoch=metrics.get("last", {}).get("epoch", state.epoch),
                     best_checkpoint=run.best_checkpoint if run.best_checkpoint.exists() else None,
                     last_checkpoint=run.last_checkpoint, log=run.read_log(), model=model)


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
    last_test = _evaluate(module, cfg, "test", device, run.eval_dir("last_test"))
    best = None
    if best_epoch is not None and run.best_checkpoint.exists():
        if best_state is None:  # the best checkpoint is the last one
            best_test = last_test
        else:
            module.load_state_dict(best_state["model"])
            best_test = _evaluate(module, cfg, "test", device, run.eval_dir("best_test"))
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
