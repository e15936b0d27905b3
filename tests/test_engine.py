"""The training engine: run folder contents, selection, callbacks, precision, accumulation, smoke training."""
from __future__ import annotations

import importlib
import json

import pytest
import torch
import yaml

import irra_core.evaluation
from irra_core import losses
from irra_core.checkpoint import load_checkpoint
from irra_core.config import load_config
from irra_core.engine import fit
from irra_core.runs import RunDir, RunExistsError


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")  # the synthetic set is generated once for the module


@pytest.fixture
def tmp_path(tmp_path, data_root):
    (tmp_path / "data").symlink_to(data_root, target_is_directory=True)
    return tmp_path


def _cfg(tmp_path, preset="php-cpu", **overrides):
    # 10 identities -> 16 training pairs: one step of 16 per epoch keeps these tests quick
    values = {"data.root": str(tmp_path / "data"), "train.progress": "none", "data.synthetic_identities": 10,
              "data.batch_size": 16}
    values.update(overrides)
    return load_config(preset, values, smoke=True)


class ScriptedEvaluate:
    """Stands in for irra_core.evaluation.evaluate with chosen t2i R1 values per (split, call)."""

    def __init__(self, periodic_scores):
        self.periodic_scores = list(periodic_scores)
        self.calls = []

    def __call__(self, model, cfg, split, *, device=None, out_dir=None, **kwargs):
        self.calls.append((split, out_dir))
        if out_dir is None:  # a periodic (selection) evaluation
            r1 = self.periodic_scores[len(self.calls) - 1]
        else:  # final test evaluations: a value that tells best and last apart
            r1 = float(sum(p.detach().double().sum() for p in model.parameters()))
        metrics = {"R1": r1, "R5": 0.0, "R10": 0.0, "mAP": 0.0, "mINP": 0.0}
        return {"t2i": metrics, "i2t": dict(metrics)}


@pytest.mark.parametrize("select_on", ["val", pytest.param("last", marks=pytest.mark.slow),
                                       pytest.param("test", marks=pytest.mark.slow)])
def test_selection_best_and_last(tmp_path, monkeypatch, select_on):
    scripted = ScriptedEvaluate([10.0, 30.0, 20.0])
    monkeypatch.setattr(irra_core.evaluation, "evaluate", scripted, raising=False)
    cfg = _cfg(tmp_path, **{"train.num_epoch": 3, "train.max_steps": 0, "train.select_on": select_on})
    result = fit(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    periodic = [c[0] for c in scripted.calls[:3]]
    assert periodic == (["test"] * 3 if select_on == "test" else ["val"] * 3)
    assert metrics["best"]["epoch"] == 2 and result.best_epoch == 2
    assert metrics["best"]["val"]["t2i"]["R1"] == 30.0
    assert metrics["last"]["epoch"] == 3
    assert load_checkpoint(result.best_checkpoint)["epoch"] == 2
    assert load_checkpoint(result.last_checkpoint)["epoch"] == 3
    assert metrics["best"]["test"] != metrics["last"]["test"]  # different weights were evaluated
    selected = metrics["last"] if select_on == "last" else metrics["best"]
    assert metrics["t2i"] == selected["test"]["t2i"]
    assert metrics["selection"]["policy"] == select_on and metrics["selection"]["metric"] == "t2i.R1"
    assert [r["best_epoch"] for r in result.log] == [1, 2, 2]


def test_run_folder_contents(tmp_path, monkeypatch):
    monkeypatch.setattr(irra_core.evaluation, "evaluate", ScriptedEvaluate([5.0]), raising=False)
    cfg = _cfg(tmp_path, **{"train.max_steps": 2, "data.batch_size": 4})
    run = tmp_path / "run"
    result = fit(cfg, run)
    assert yaml.safe_load((run / "config.yaml").read_text()) == cfg.to_dict()
    env = json.loads((run / "env.json").read_text())
    for key in ("python", "torch", "git", "device", "torch_threads", "starts"):
        assert key in env, key
    (record,) = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    for key in ("epoch", "step", "lr", "loss", "sdm_loss", "itc_loss", "aux_loss", "pairs_per_s", "eval", "routing"):
        assert key in record, key
    assert record["step"] == 2 and record["partial_epoch"] is True
    assert record["loss"] == pytest.approx(record["sdm_loss"] + record["itc_loss"] + record["aux_loss"])
    routing = record["routing"]
    assert set(routing) == {"image", "text"} and len(routing["image"]) == cfg.model.moe_layers
    counts = routing["image"][0]["counts"]
    assert len(counts) == cfg.model.num_experts
    # every EFP token picks top-k experts: counts sum to steps x batch x cnum x k
    assert sum(counts) == record["samples"] * cfg.model.cnum * cfg.model.topk
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    for key in ("model", "optimizer", "scheduler", "scaler", "rng", "epoch", "iteration", "config"):
        assert key in state, key
    assert state["iteration"] == 2 and state["config"] == cfg.to_dict()
    assert not list((run / "checkpoints").glob(".*tmp"))  # no temporary files left behind
    assert set(result.metrics) >= {"t2i", "i2t", "best", "last", "selection"}


def test_existing_run_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(irra_core.evaluation, "evaluate", ScriptedEvaluate([5.0]), raising=False)
    cfg = _cfg(tmp_path, **{"train.max_steps": 1})
    fit(cfg, tmp_path / "run")
    with pytest.raises(RunExistsError, match="resume=True"):
        fit(cfg, tmp_path / "run", resume=False)
    other = _cfg(tmp_path, **{"train.max_steps": 1, "optim.lr": 0.5})
    with pytest.raises(RunExistsError, match="optim.lr"):
        fit(other, tmp_path / "run", resume=True)
    # where and how fast may change on resume
    assert RunDir(tmp_path / "run").config_differences(_cfg(tmp_path, **{"train.max_steps": 1,
                                                                          "train.log_period": 7})) == {}


def test_dataset_without_val_split_selects_last_and_says_so(tmp_path, monkeypatch, capsys):
    # ICFG-PEDES has no val split: the default select_on=val selects the last epoch, evaluates nothing during
    # training, writes no best.pt and records why in metrics.json
    scripted = ScriptedEvaluate([])
    monkeypatch.setattr(irra_core.evaluation, "evaluate", scripted, raising=False)
    cfg = _cfg(tmp_path, **{"train.num_epoch": 2, "train.max_steps": 0})
    assert cfg.train.select_on == "val"

    from irra_core.data import prepare_dataset

    dataset = prepare_dataset(cfg)
    dataset.val = {"image_pids": [], "img_paths": [], "caption_pids": [], "captions": []}
    result = fit(cfg, tmp_path / "run", dataset=dataset)
    assert [split for split, out_dir in scripted.calls] == ["test"]  # only the final test evaluation
    selection = result.metrics["selection"]
    assert selection["policy"] == "last" and selection["requested"] == "val" and selection["epoch"] == 2
    assert "no validation split" in selection["note"] and "data.val_from_train" in selection["note"]
    assert result.metrics["best"] is None and result.best_checkpoint is None
    assert result.metrics["t2i"] == result.metrics["last"]["test"]["t2i"]
    assert "selection: " in capsys.readouterr().out
    # IRRA's explicit switch still selects on the test split
    scripted = ScriptedEvaluate([1.0, 2.0])
    monkeypatch.setattr(irra_core.evaluation, "evaluate", scripted, raising=False)
    cfg = _cfg(tmp_path, **{"train.num_epoch": 2, "train.max_steps": 0, "train.select_on": "test"})
    result = fit(cfg, tmp_path / "run-test", dataset=dataset)
    assert [split for split, _ in scripted.calls[:2]] == ["test", "test"]
    assert result.metrics["selection"]["policy"] == "test" and result.metrics["best"]["epoch"] == 2


def test_callbacks_see_steps_evals_and_can_stop(tmp_path, monkeypatch):
    monkeypatch.setattr(irra_core.evaluation, "evaluate", ScriptedEvaluate([1.0, 2.0, 3.0]), raising=False)
    cfg = _cfg(tmp_path, **{"train.num_epoch": 3, "train.max_steps": 0})
    seen = {"step": [], "eval": [], "epoch": []}

    class Recorder:
        def on_step(self, state):
            seen["step"].append((state.epoch, state.step, sorted(state.outputs)))

        def on_eval(self, state):
            seen["eval"].append(state.eval_metrics["t2i"]["R1"])

        def on_epoch_end(self, state):
            seen["epoch"].append(state.record["epoch"])
            state.stop = state.epoch == 2  # early stopping from a notebook

    result = fit(cfg, tmp_path / "run", callbacks=[Recorder(), object()])  # hooks are optional
    assert seen["epoch"] == [1, 2] and seen["eval"] == [1.0, 2.0]
    assert [s[1] for s in seen["step"]] == list(range(1, len(seen["step"]) + 1))
    assert "sdm_loss" in seen["step"][0][2]
    assert result.last_epoch == 2 and result.metrics["last"]["epoch"] == 2


def test_gradient_accumulation_and_clipping(tmp_path, monkeypatch):
    monkeypatch.setattr(irra_core.evaluation, "evaluate", ScriptedEvaluate([1.0]), raising=False)
    cfg = _cfg(tmp_path, **{"train.max_steps": 0, "train.grad_accum": 2, "train.grad_clip": 1.0,
                            "data.batch_size": 4})
    result = fit(cfg, tmp_path / "run")
    from irra_core.data import build_train_loader, prepare_dataset

    batches = len(build_train_loader(cfg, prepare_dataset(cfg)))
    assert result.log[0]["step"] == -(-batches // 2)  # one optimiser step per two micro-batches
    assert result.log[0]["samples"] == len(prepare_dataset(cfg).train)


@pytest.mark.slow
def test_bf16_autocast_runs_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(irra_core.evaluation, "evaluate", ScriptedEvaluate([1.0]), raising=False)
    cfg = _cfg(tmp_path, "irra-cpu", **{"train.max_steps": 1, "model.precision": "bf16"})
    with pytest.warns(UserWarning, match="slower than fp32"):
        result = fit(cfg, tmp_path / "run")
    assert torch.isfinite(torch.tensor(result.log[0]["loss"]))
    assert all(v.dtype == torch.float32 for v in load_checkpoint(result.last_checkpoint)["model"].values()
               if v.is_floating_point())


@pytest.mark.slow
def test_legacy_fp16_keeps_irra_weight_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(irra_core.evaluation, "evaluate", ScriptedEvaluate([1.0]), raising=False)
    cfg = _cfg(tmp_path, "irra-cpu", **{"train.max_steps": 1, "model.precision": "legacy_fp16",
                                        "optim.optimizer": "Adam"})
    with pytest.warns(UserWarning, match="legacy_fp16"):
        result = fit(cfg, tmp_path / "run")
    state = load_checkpoint(result.last_checkpoint)["model"]
    assert state["base_model.visual.conv1.weight"].dtype == torch.float16  # pure fp16 weights, as IRRA
    assert state["base_model.ln_final.weight"].dtype == torch.float32
    assert torch.isfinite(torch.tensor(result.log[0]["loss"]))


def _training_set_loss(model, batches) -> float:
    """Total loss over fixed batches of the training set, eval mode (no dropout), no gradients."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            out = losses.total_loss(model(batch), batch, model.cfg.loss_weights())
            total += float(sum(out.values())) * len(batch["pids"])
            count += len(batch["pids"])
    model.train(was_training)
    return total / count


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["irra-cpu", "php-cpu"])
def test_smoke_training_decreases_loss(tmp_path, preset):
    from irra_core.data import build_train_loader, prepare_dataset
    from irra_core.model import build_model

    cfg = _cfg(tmp_path, preset, **{"train.num_epoch": 4, "train.max_steps": 0, "train.eval_period": 4,
                                    "optim.warmup_epochs": 0, "data.batch_size": 8, "train.select_on": "last"})
    dataset = prepare_dataset(cfg)
    loader = build_train_loader(cfg, dataset)
    loader.sampler.set_epoch(1)
    batches = list(loader)  # the whole training set, MLM masks of epoch 1
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, dataset.num_classes)
    before = _training_set_loss(model, batches)
    result = fit(cfg, tmp_path / "run", dataset=dataset, model=model)  # the real evaluation runs at the end
    after = _training_set_loss(result.model, batches)
    assert after < before, f"{preset}: training-set loss {before:.4f} -> {after:.4f} did not decrease"
    assert len(result.log) == 4
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["t2i"]["R1"] <= 100.0 and metrics["selection"]["policy"] == "last"


def test_deterministic_mode_is_scoped_to_the_run(monkeypatch):
    import os

    from irra_core.engine import _deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled()
    with _deterministic(True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ and torch.are_deterministic_algorithms_enabled() == before
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with _deterministic(True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_final_report_caches_the_test_embeddings_for_the_notebooks(tmp_path, monkeypatch):
    # the test split is encoded once at the end of training; the inspection layer (notebooks 20-40) finds the
    # embeddings under the loaded checkpoint's fingerprint instead of encoding the split again
    from irra_core.evaluation import encode as encode_module
    from irra_core.evaluation.evaluate import model_fingerprint
    from irra_core.viz.inspect import load_run

    cfg = _cfg(tmp_path, **{"train.max_steps": 1})
    run = tmp_path / "run"
    fit(cfg, run)
    loaded = load_run(run, "best")
    (cached,) = (run / "cache").glob("embeddings-*.pt")
    assert cached.name == f"embeddings-{model_fingerprint(loaded.model)}-test-bs{cfg.data.test_batch_size}.pt"
    calls = []
    real = encode_module.encode_split
    evaluate_module = importlib.import_module("irra_core.evaluation.evaluate")  # the package re-exports evaluate()
    monkeypatch.setattr(evaluate_module, "encode_split", lambda *a, **k: calls.append(1) or real(*a, **k))
    metrics = irra_core.evaluation.evaluate(loaded.model, loaded.cfg, "test", cache_dir=run / "cache")
    assert calls == []  # served from the cache
    assert metrics["t2i"]["R1"] == pytest.approx(json.loads((run / "metrics.json").read_text())["t2i"]["R1"])


@pytest.mark.parametrize("preset", ["irra-cpu", "php-cpu"])
def test_sparse_embedding_trains_as_dense_adamw(tmp_path, monkeypatch, preset):
    """optim.sparse_embedding (on in the cpu presets) changes the speed, not the run: same weights after
    a few steps (the MLM branch's random tokens included) as the dense gradient with torch's AdamW, up to
    float rounding."""
    from irra_core.optim import RowSparseAdamW

    runs, sparse_steps, real_step = {}, [], RowSparseAdamW._sparse_step
    monkeypatch.setattr(RowSparseAdamW, "_sparse_step",
                        lambda self, p, group: sparse_steps.append(tuple(p.shape)) or real_step(self, p, group))
    for sparse in (True, False):
        monkeypatch.setattr(irra_core.evaluation, "evaluate", ScriptedEvaluate([1.0] * 3), raising=False)
        cfg = _cfg(tmp_path, preset, **{"train.max_steps": 3, "data.batch_size": 4, "optim.sparse_embedding": sparse})
        runs[sparse] = load_checkpoint(fit(cfg, tmp_path / f"run-{sparse}").last_checkpoint)["model"]
        # the row-sparse path ran on the token embedding at every step of the sparse run, never in the dense one
        assert sparse_steps == ([(cfg.model.vocab_size, cfg.model.text_width)] * 3 if sparse else []), sparse
        sparse_steps.clear()
    assert runs[True].keys() == runs[False].keys()
    for key, dense in runs[False].items():
        sparse = runs[True][key]
        if key.endswith("in_proj_bias"):
            # the key bias has an exactly zero gradient (softmax is shift-invariant): Adam turns its float noise
            # into +-lr steps whose sign follows the last bit, and the key bias does not change any output
            third = dense.shape[0] // 3
            dense, sparse = torch.cat([dense[:third], dense[2 * third:]]), torch.cat([sparse[:third], sparse[2 * third:]])
        # 3 steps of lr up to 5e-3 (lr factor 5): differences of float rounding grow to ~3e-6 on weights of ~0.5;
        # a wrong update would differ by ~lr (tests/test_optim.py checks the step itself at 1e-7)
        torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=2e-5, msg=key)
    assert load_config(preset).optim.sparse_embedding


def test_sparse_embedding_leaves_the_callers_model_dense(tmp_path, monkeypatch):
    monkeypatch.setattr(irra_core.evaluation, "evaluate", ScriptedEvaluate([1.0] * 3), raising=False)
    cfg = _cfg(tmp_path, **{"train.max_steps": 1, "optim.sparse_embedding": True})
    from irra_core.data import prepare_dataset
    from irra_core.model import build_model

    model = build_model(cfg, prepare_dataset(cfg).num_classes)
    fit(cfg, tmp_path / "run", model=model)
    assert not model.base_model.token_embedding.sparse


@pytest.mark.parametrize("setting,reason", [({"train.grad_clip": 1.0}, "train.grad_clip"),
                                            ({"optim.optimizer": "Adam"}, "optim.optimizer Adam")])
def test_sparse_embedding_stays_dense_where_it_cannot_apply(tmp_path, monkeypatch, capsys, setting, reason):
    monkeypatch.setattr(irra_core.evaluation, "evaluate", ScriptedEvaluate([1.0]), raising=False)
    cfg = _cfg(tmp_path, **{"train.max_steps": 1, "optim.sparse_embedding": True, **setting})
    fit(cfg, tmp_path / "run")  # torch's Adam would raise on a sparse gradient
    assert f"optim.sparse_embedding: dense gradients under {reason}" in capsys.readouterr().out
