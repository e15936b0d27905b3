"""A second run trained in a child process while this one trains (irra_core.alongside), and its hand-over to
notebook 40 (the finished run is resumed, not retrained)."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from irra_core.alongside import (AlongsideError, AlongsideRun, AlongsideWatch, alongside_config_path, plan_alongside,
                                 start_alongside, training_alongside)
from irra_core.config import load_config, save_config
from irra_core.runs import RunDir, RunExistsError
from irra_core.train_notebook import train_with_live_curves
from irra_core.workbook import AUDIT_RUN, audit_model_config, train_audit_model


def _cfg(root, **overrides):
    values = {"data.root": str(root), "train.progress": "none", "data.synthetic_identities": 10,
              "data.batch_size": 16, "model.efp_attention": "batch"}
    values.update(overrides)
    return load_config("php-cpu", values, smoke=True)


def test_plan_shares_cpu_threads_only():
    assert plan_alongside("cpu", 2) == (1, 1)
    assert plan_alongside("cpu", 5) == (3, 2)
    assert plan_alongside("cpu", 1) is None
    assert plan_alongside(torch.device("cuda"), 8) is None


def test_run_alongside_trains_and_hands_over_a_finished_run(tmp_path):
    cfg = _cfg(tmp_path / "data")
    run = start_alongside(cfg, tmp_path / "run" / "other", threads=1)
    seconds = run.wait()
    assert seconds > 0 and not run.running()
    assert [line.split(" done:")[0] for line in run.epoch_lines()] == ["epoch 1"]
    metrics = json.loads((tmp_path / "run" / "other" / "metrics.json").read_text())
    assert RunDir(tmp_path / "run" / "other").load_config().train.progress == "lines"  # the child writes lines
    steps = len((tmp_path / "run" / "other" / "log.jsonl").read_text().splitlines())
    # notebook 40 on the same folder and config, in a fresh workbook run (RESUME False): reuses the finished
    # run, trains nothing
    result = train_audit_model(cfg, tmp_path / "run" / "other", resume=False)
    assert result.metrics["t2i"] == metrics["t2i"]
    assert len((tmp_path / "run" / "other" / "log.jsonl").read_text().splitlines()) == steps
    # started again on the finished folder: nothing to train, and the first start's output is kept in the log
    again = start_alongside(cfg, tmp_path / "run" / "other", threads=1)
    again.wait()
    assert again.epoch_lines() == [] and run.log_path == again.log_path
    assert run.log_path.read_text().count("== start of python -m irra_core.train alongside") == 2
    assert "epoch 1 done:" in run.log_path.read_text()


def test_failed_run_alongside_raises_with_its_log(tmp_path):
    cfg = _cfg(tmp_path / "data", **{"data.dataset": "CUHK-PEDES", "data.root": str(tmp_path / "missing")})
    run = start_alongside(cfg, tmp_path / "run" / "other", threads=1)
    with pytest.raises(AlongsideError, match=r"(?s)other: the run trained alongside exited with status 2.*error:"):
        run.wait()


def test_error_here_stops_the_run_alongside(tmp_path):
    cfg = _cfg(tmp_path / "data", **{"train.num_epoch": 50, "train.max_steps": 100_000})
    with pytest.raises(KeyError, match="boom"):
        with training_alongside(cfg, tmp_path / "run" / "other", (1, 1)) as run:
            time.sleep(0.5)
            assert run.running()
            raise KeyError("boom")
    assert run.process.returncode == -15  # terminated (SIGTERM), not left running


def test_audit_model_config_is_notebook_40s_model():
    name, cfg = audit_model_config("cpu", seed=3)
    assert name == AUDIT_RUN and cfg.model.efp_attention == "batch" and cfg.train.seed == 3
    assert cfg.train.num_epoch == load_config("php-cpu").train.num_epoch  # as long as the per-sample PHP
    name, cfg = audit_model_config("cpu", epochs=7)
    assert name == f"{AUDIT_RUN}-7ep" and cfg.train.num_epoch == 7


def test_unfinished_audit_run_is_not_taken_over_without_resume(tmp_path):
    cfg = _cfg(tmp_path / "data")
    RunDir.open(tmp_path / "other", cfg)  # a run that started (config.yaml) but never finished
    with pytest.raises(RunExistsError, match="already holds a run"):
        train_audit_model(cfg, tmp_path / "other", resume=False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_run_alongside_stops_when_the_starting_process_is_killed(tmp_path):
    # a killed kernel must not leave a child training into the run folder
    script = (f"import sys, time\nfrom irra_core.alongside import start_alongside\n"
              f"from irra_core.config import load_config\n"
              f"cfg = load_config('php-cpu', {{'data.root': {str(tmp_path / 'data')!r}, 'train.num_epoch': 5000, "
              f"'train.max_steps': 100000, 'data.synthetic_identities': 10, 'data.batch_size': 16}}, smoke=True)\n"
              f"run = start_alongside(cfg, {str(tmp_path / 'run' / 'other')!r})\n"
              f"print(run.process.pid, flush=True)\ntime.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(1.0)
    assert _alive(child)
    parent.kill()
    parent.wait()
    deadline = time.time() + 30
    while time.time() < deadline and _alive(child):
        time.sleep(0.2)
    assert not _alive(child), "the run alongside outlived the process that started it"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_interrupted_run_started_alongside_is_resumed_by_notebook_40(tmp_path):
    cfg = _cfg(tmp_path / "data")
    RunDir.open(tmp_path / "other", cfg)  # started alongside, then the kernel died before its first epoch ended
    save_config(cfg, alongside_config_path(tmp_path / "other"))
    result = train_audit_model(cfg, tmp_path / "other", resume=False)
    assert result.last_epoch == 1 and (tmp_path / "other" / "metrics.json").exists()


def test_watch_reports_a_failed_run_at_once_and_returns_the_threads(tmp_path, capsys):
    log = tmp_path / "other.alongside.log"
    log.write_text("error: something the child could not do\n")
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    process.wait()
    run = AlongsideRun("other", tmp_path / "other", log, 1, process)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        AlongsideWatch(run, 2).on_step(None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "warning: other, trained alongside, exited with status 3" in out and "could not do" in out
    assert run.reported
    # a run alongside that succeeded leaves this run's threads alone (its result must not depend on timing)
    ok = subprocess.Popen([sys.executable, "-c", "pass"])
    ok.wait()
    try:
        torch.set_num_threads(1)
        AlongsideWatch(AlongsideRun("fine", tmp_path / "fine", log, 1, ok), 2).on_step(None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_failed_run_alongside_does_not_fail_the_training_notebook(tmp_path, capsys):
    cfg = _cfg(tmp_path / "data", **{"model.efp_attention": "tokens"})
    broken = _cfg(tmp_path / "data", **{"data.dataset": "CUHK-PEDES", "data.root": str(tmp_path / "missing")})
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        result, _ = train_with_live_curves(cfg, tmp_path / "run", "php", alongside=("php-batch-efp", broken))
    finally:
        torch.set_num_threads(before)
    assert (tmp_path / "run" / "php" / "metrics.json").exists() and result.last_epoch == 1
    out = capsys.readouterr().out
    assert "php-batch-efp, trained alongside, exited with status 2" in out or \
        "warning: php-batch-efp: the run trained alongside exited with status 2" in out
    assert "php-batch-efp did not finish alongside: the notebook that needs it resumes or retrains it" in out
