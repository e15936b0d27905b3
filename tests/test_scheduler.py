"""LR schedule: parity with IRRA's warm-up scheduler (tests/fixtures/scheduler_cases.json) and the per-iteration mode."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from irra_core.config import OptimConfig
from irra_core.optim import build_optimizer
from irra_core.scheduler import WarmupDecayLR, build_scheduler, lr_at


@pytest.fixture(scope="module")
def scheduler_cases(fixtures_dir):
    return json.loads((fixtures_dir / "scheduler_cases.json").read_text())["cases"]


def _scheduler_for(case: dict, optimizer, steps_per_epoch: int = 1) -> WarmupDecayLR:
    return WarmupDecayLR(optimizer, mode=case["mode"], total_epochs=case["total_epochs"],
                         warmup_epochs=case["warmup_epochs"], warmup_factor=case["warmup_factor"],
                         warmup_method=case["warmup_method"], milestones=case["milestones"], gamma=case["gamma"],
                         power=case["power"], target_lr=case["target_lr"], steps_per_epoch=steps_per_epoch)


@pytest.mark.parity
def test_every_case_stepped_like_irra(scheduler_cases):
    assert len(scheduler_cases) == 7
    for case in scheduler_cases:
        param = nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=case["base_lr"])
        sched = _scheduler_for(case, opt)
        seen = []
        for _ in range(case["total_epochs"]):
            seen.append(opt.param_groups[0]["lr"])  # the lr this epoch trains with
            opt.step()
            sched.step()
        assert seen == pytest.approx(case["lr_per_epoch"], rel=1e-12, abs=0), case["name"]
        assert opt.param_groups[0]["lr"] == pytest.approx(case["lr_after_last_step"], rel=1e-12, abs=1e-30)


@pytest.mark.parity
def test_per_iteration_mode_agrees_at_epoch_boundaries(scheduler_cases):
    steps = 4
    for case in scheduler_cases:
        param = nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=case["base_lr"])
        sched = _scheduler_for(case, opt, steps_per_epoch=steps)
        within_epoch = []
        for epoch in range(case["total_epochs"]):
            assert opt.param_groups[0]["lr"] == pytest.approx(case["lr_per_epoch"][epoch], rel=1e-12)
            for _ in range(steps):
                within_epoch.append(opt.param_groups[0]["lr"])
                opt.step()
                sched.step()
        if case["name"].startswith("cosine_warmup_linear"):
            # between boundaries the lr moves: the linear warm-up rises within epoch 1
            assert within_epoch[0] < within_epoch[1] < within_epoch[2] < within_epoch[3]
            assert within_epoch[1] == pytest.approx(lr_at(0.25, case["base_lr"]), rel=1e-12)


def test_groups_keep_their_factors_and_state_dict_resumes():
    model = nn.Sequential(nn.Linear(2, 2))
    optim = OptimConfig(optimizer="SGD", lr=1.0, bias_lr_factor=2.0, warmup_epochs=2, lrscheduler="cosine")
    opt = build_optimizer(model, optim)
    sched = build_scheduler(opt, optim, total_epochs=6)
    ratio = {g["names"][0]: g["lr"] for g in opt.param_groups}
    assert ratio["0.bias"] == pytest.approx(2 * ratio["0.weight"])
    for _ in range(3):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = build_optimizer(model, optim)
    opt2.load_state_dict(opt.state_dict())
    sched2 = build_scheduler(opt2, optim, total_epochs=6)
    sched2.load_state_dict(state)
    for _ in range(2):
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(5, 1.0, total_epochs=6, warmup_epochs=2))


def test_iteration_mode_is_chosen_by_config():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, OptimConfig(scheduler_step="iteration"), total_epochs=10, steps_per_epoch=7)
    assert sched.steps_per_epoch == 7
    sched = build_scheduler(opt, OptimConfig(scheduler_step="epoch"), total_epochs=10, steps_per_epoch=7)
    assert sched.steps_per_epoch == 1


def test_bad_mode_is_named():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="cosin"):
        WarmupDecayLR(opt, mode="cosin")
