"""The training loop's reporting: epoch means and expert-count sums (one process), progress lines."""
from __future__ import annotations

import torch

from irra_core.train_progress import EpochMeter, Progress


def test_epoch_meter_means_losses_and_sums_expert_counts():
    meter = EpochMeter()
    routing = lambda counts, aux: {"image": [{"counts": torch.tensor(counts), "aux": torch.tensor(aux)}]}  # noqa: E731
    meter.update({"sdm_loss": torch.tensor(2.0), "img_acc": 0.5, "routing": routing([1, 3], 0.2)}, batch_size=4)
    meter.update({"sdm_loss": torch.tensor(4.0), "img_acc": 1.0, "routing": routing([2, 0], 0.4)}, batch_size=6)
    summary = meter.summary(torch.device("cpu"))
    assert summary["sdm_loss"] == 3.0 and summary["img_acc"] == 0.75
    assert summary["loss"] == 3.0  # the sum over the keys containing "loss"
    assert summary["samples"] == 10
    assert summary["routing"]["image"][0]["counts"] == [3, 3]
    assert abs(summary["routing"]["image"][0]["aux"] - 0.3) < 1e-6  # float32 inputs


def test_progress_lines_every_log_period_and_at_the_end(capsys):
    progress = Progress("lines", log_period=2, enabled=True)
    progress.start_epoch(1, 3, total=3)
    for step in (1, 2, 3):
        progress.step(1, step, 3, {"sdm_loss": 1.5, "temperature": 0.02}, lr=1e-3)
    progress.end_epoch({"epoch": 1, "loss": 1.5, "pairs_per_s": 10.0, "eval": None})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[3] for line in lines[:2]] == ["2/3", "3/3"]  # step 1 is not a multiple of 2
    assert "temperature" not in lines[0] and "sdm_loss 1.5000" in lines[0]
    assert lines[-1].startswith("epoch 1 done: loss 1.5000")
    silent = Progress("lines", log_period=1, enabled=False)  # other ranks print nothing
    silent.step(1, 1, 1, {"sdm_loss": 1.0}, lr=1e-3)
    assert capsys.readouterr().out == ""
