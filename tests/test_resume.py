"""A killed run resumes from its last checkpoint and ends with exactly the weights of an uninterrupted run."""
from __future__ import annotations

import pytest
import torch

from irra_core.checkpoint import load_checkpoint
from irra_core.config import load_config
from irra_core.engine import fit


class _Kill(RuntimeError):
    pass


class _KillAt:
    """Raise (like a SIGKILL would stop the loop) at the given optimiser step of the given epoch."""

    def __init__(self, epoch: int, epoch_step: int) -> None:
        self.epoch, self.epoch_step = epoch, epoch_step

    def on_step(self, state) -> None:
        if state.epoch == self.epoch and state.epoch_step == self.epoch_step:
            raise _Kill(f"killed at epoch {state.epoch} step {state.epoch_step}")


def _cfg(tmp_path):
    # PHP on purpose: its adapter dropout draws from the RNG, so the RNG states must be restored too
    return load_config("php-cpu", {"data.root": str(tmp_path / "data"), "train.num_epoch": 2, "train.max_steps": 0,
                                   "train.deterministic": True, "train.progress": "none",
                                   "optim.warmup_epochs": 1, "data.synthetic_identities": 16}, smoke=True)


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(tmp_path):
    cfg = _cfg(tmp_path)
    full = fit(cfg, tmp_path / "full")

    with pytest.raises(_Kill):
        fit(cfg, tmp_path / "killed", callbacks=[_KillAt(epoch=2, epoch_step=2)])
    interrupted = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert interrupted["epoch"] == 1  # epoch 1 finished and checkpointed; epoch 2 was lost mid-way
    assert not (tmp_path / "killed" / "metrics.json").exists()

    resumed = fit(cfg, tmp_path / "killed", resume=True)

    a = load_checkpoint(full.last_checkpoint)
    b = load_checkpoint(resumed.last_checkpoint)
    assert a["epoch"] == b["epoch"] == 2 and a["iteration"] == b["iteration"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), f"weights differ at {key}"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for name in sa:
            assert torch.equal(torch.as_tensor(sa[name]), torch.as_tensor(sb[name])), f"optimizer {name} differs"
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    # finished epochs are kept, the lost one is redone, and no epoch is logged twice
    assert [r["epoch"] for r in resumed.log] == [1, 2]
    assert [r["loss"] for r in resumed.log] == [r["loss"] for r in full.log]
    assert resumed.metrics["t2i"] == full.metrics["t2i"]
    env = (tmp_path / "killed" / "env.json").read_text()
    assert env.count('"torch":') >= 2  # both starts are recorded


def test_finished_run_is_not_retrained(tmp_path):
    cfg = load_config("php-cpu", {"data.root": str(tmp_path / "data"), "train.max_steps": 1,
                                  "train.progress": "none", "data.synthetic_identities": 16}, smoke=True)
    first = fit(cfg, tmp_path / "run")
    steps = []

    class Count:
        def on_step(self, state):
            steps.append(state.step)

    again = fit(cfg, tmp_path / "run", callbacks=[Count()], resume=True)
    assert steps == []  # nothing left to train
    assert again.metrics == first.metrics
    assert len(again.log) == len(first.log) == 1


def test_kill_before_the_first_checkpoint_restarts_cleanly(tmp_path):
    cfg = load_config("php-cpu", {"data.root": str(tmp_path / "data"), "train.max_steps": 2, "data.batch_size": 4,
                                  "train.progress": "none", "data.synthetic_identities": 10}, smoke=True)
    with pytest.raises(_Kill):
        fit(cfg, tmp_path / "run", callbacks=[_KillAt(epoch=1, epoch_step=1)])
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    with (tmp_path / "run" / "log.jsonl").open("w") as handle:  # as if killed just after logging epoch 1
        handle.write('{"epoch": 1, "loss": 1.0}\n{"epoch": 2, "lo')
    result = fit(cfg, tmp_path / "run", resume=True)
    assert [r["epoch"] for r in result.log] == [1] and result.log[0]["loss"] != 1.0
