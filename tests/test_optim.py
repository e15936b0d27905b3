"""Optimiser groups: parity with IRRA's and PHP's solver rules (tests/fixtures/optimizer_groups.json)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from irra_core.config import OptimConfig
from irra_core.optim import (RowSparseAdamW, build_optimizer, build_param_groups, set_sparse_embeddings,
                              param_lr_and_weight_decay)

CASES = {"irra": "irra", "php_head": "irra", "php_prerelease": "php_prerelease",
         "php_prerelease_other_factors": "php_prerelease"}


@pytest.fixture(scope="module")
def groups_fixture(fixtures_dir):
    return json.loads((fixtures_dir / "optimizer_groups.json").read_text())


def _optim_from(case: dict, lr_groups: str) -> OptimConfig:
    s = case["settings"]
    return OptimConfig(optimizer=s["optimizer"], lr=s["lr"], lr_factor=s["lr_factor"],
                       bias_lr_factor=s["bias_lr_factor"], weight_decay=s["weight_decay"],
                       weight_decay_bias=s["weight_decay_bias"], alpha=s["alpha"], beta=s["beta"],
                       lr_groups=lr_groups, transformer_lr_factor=s.get("transformer_lr_factor", 1.0),
                       moe_lr_factor=s.get("moe_lr_factor", 1.0), adam_eps=case["eps"])


@pytest.mark.parity
@pytest.mark.parametrize("case_name", sorted(CASES))
def test_rules_match_reference(groups_fixture, case_name):
    case = groups_fixture[case_name]
    optim = _optim_from(case, CASES[case_name])
    assert len(case["params"]) > 50
    for name, expected in case["params"].items():
        lr, wd = param_lr_and_weight_decay(name, optim)
        assert lr == pytest.approx(expected["lr"], rel=1e-12), name
        assert wd == pytest.approx(expected["weight_decay"], abs=0, rel=1e-12), name


@pytest.mark.parity
def test_prerelease_rules_differ_from_release(groups_fixture):
    # the pre-release switch must matter for the EFP experts (x moe_lr_factor), not for the backbone
    optim = _optim_from(groups_fixture["php_prerelease_other_factors"], "php_prerelease")
    release = _optim_from(groups_fixture["php_prerelease_other_factors"], "irra")
    name = "shared_transformer.resblocks.0.feed_forward.experts.0.down.weight"
    assert param_lr_and_weight_decay(name, optim)[0] == pytest.approx(10 * optim.lr)
    assert param_lr_and_weight_decay(name, release)[0] == pytest.approx(optim.lr)
    # our names (efp / moe, the papers') get what the release's names get
    for release_name, expected in groups_fixture["php_prerelease_other_factors"]["params"].items():
        ours = release_name.replace("shared_transformer.", "efp.").replace(".feed_forward.", ".moe.")
        ours = "crfm." + ours[len("safl."):] if ours.startswith("safl.") else ours
        assert param_lr_and_weight_decay(ours, optim) == param_lr_and_weight_decay(release_name, optim), ours
    assert (param_lr_and_weight_decay("base_model.visual.conv1.weight", optim)
            == param_lr_and_weight_decay("base_model.visual.conv1.weight", release))


class _Named(nn.Module):
    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.params = nn.ParameterDict({n.replace(".", "__"): nn.Parameter(torch.randn(3)) for n in names})

    def named_parameters(self, *args, **kwargs):
        for key, param in self.params.items():
            yield key.replace("__", "."), param


@pytest.mark.parity
@pytest.mark.parametrize("case_name", ["irra", "php_prerelease_other_factors"])
def test_optimizer_groups_and_hyperparameters(groups_fixture, case_name):
    case = groups_fixture[case_name]
    optim = _optim_from(case, CASES[case_name])
    model = _Named(list(case["params"]))
    opt = build_optimizer(model, optim)
    assert isinstance(opt, torch.optim.Adam)
    by_name = {}
    for group in opt.param_groups:
        assert group["eps"] == case["eps"] and list(group["betas"]) == case["betas"]
        for name in group["names"]:
            by_name[name] = (group["lr"], group["weight_decay"])
    assert set(by_name) == set(case["params"])
    for name, expected in case["params"].items():
        assert by_name[name] == pytest.approx((expected["lr"], expected["weight_decay"])), name
    # groups merge tensors with equal settings, so there are few of them (fused / foreach friendly)
    assert len(opt.param_groups) == len({(v["lr"], v["weight_decay"]) for v in case["params"].values()})


def test_frozen_parameters_are_left_out():
    model = nn.Linear(2, 2)
    model.bias.requires_grad_(False)
    groups = build_param_groups(model.named_parameters(), OptimConfig())
    assert [n for g in groups for n in g["names"]] == ["weight"]


@pytest.mark.parametrize("kind,cls,eps", [("Adam", torch.optim.Adam, 1e-3), ("AdamW", torch.optim.AdamW, 1e-8),
                                          ("SGD", torch.optim.SGD, None)])
def test_optimizer_kinds_and_fused_step_matches_plain(kind, cls, eps):
    torch.manual_seed(0)
    model_a, model_b = nn.Linear(4, 3), nn.Linear(4, 3)
    model_b.load_state_dict(model_a.state_dict())
    opt_a = build_optimizer(model_a, OptimConfig(optimizer=kind, lr=1e-2, fused=True))
    opt_b = build_optimizer(model_b, OptimConfig(optimizer=kind, lr=1e-2, fused=False))
    assert isinstance(opt_a, cls)
    if eps is not None:
        assert opt_a.param_groups[0]["eps"] == eps
    x = torch.randn(5, 4)
    for model, opt in ((model_a, opt_a), (model_b, opt_b)):
        for _ in range(3):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="Adamw"):
        build_optimizer(nn.Linear(2, 2), OptimConfig(optimizer="Adamw"))


class _Bag(nn.Module):
    """An embedding table and a head: the shape of a text tower's first and last layers."""

    def __init__(self, rows: int = 40, width: int = 6) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(rows, width)
        self.head = nn.Linear(width, 3)

    def forward(self, ids):
        return self.head(self.token_embedding(ids)).square().mean()


def _train(model, optimizer, batches):
    for ids in batches:
        optimizer.zero_grad(set_to_none=True)
        model(ids).backward()
        optimizer.step()


def _id_batches(steps: int = 12):
    g = torch.Generator().manual_seed(3)
    # early batches use rows 0-9 only, later ones 0-24: rows that go unused for a while, rows first used late,
    # and rows 25-39 never used (they only decay)
    return [torch.randint(0, 10 if t < steps // 2 else 25, (4, 5), generator=g) for t in range(steps)]


@pytest.mark.parametrize("fused", [True, False])
def test_row_sparse_adamw_matches_dense_adamw(fused):
    torch.manual_seed(0)
    dense, sparse = _Bag(), _Bag()
    sparse.load_state_dict(dense.state_dict())
    options = OptimConfig(optimizer="AdamW", lr=2e-2, weight_decay=0.1, bias_lr_factor=2.0, fused=fused)
    opt_dense = build_optimizer(dense, options)
    opt_sparse = build_optimizer(sparse, OptimConfig(**{**vars(options), "sparse_embedding": True}))
    assert type(opt_dense) is torch.optim.AdamW and isinstance(opt_sparse, RowSparseAdamW)
    assert set_sparse_embeddings(sparse) == 1
    batches = _id_batches()
    _train(dense, opt_dense, batches)
    _train(sparse, opt_sparse, batches)
    assert sparse.token_embedding.weight.grad.is_sparse  # the row-sparse path ran
    for (name, a), b in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)
    state_a, state_b = opt_dense.state[dense.token_embedding.weight], opt_sparse.state[sparse.token_embedding.weight]
    for key in ("step", "exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(state_b[key], state_a[key], rtol=1e-6, atol=1e-9, msg=key)
    # never-used rows moved by the decay alone
    torch.manual_seed(0)
    start = _Bag()
    factor = (1 - 2e-2 * 0.1) ** len(batches)
    torch.testing.assert_close(sparse.token_embedding.weight[25:], start.token_embedding.weight[25:] * factor)


def test_row_sparse_adamw_state_moves_to_and_from_adamw():
    """A checkpoint of one optimiser resumes in the other: both continue as an uninterrupted AdamW run."""
    torch.manual_seed(0)
    reference, resumed = _Bag(), _Bag()
    resumed.load_state_dict(reference.state_dict())
    options = OptimConfig(optimizer="AdamW", lr=2e-2, weight_decay=0.1)
    batches = _id_batches(16)
    opt_ref = build_optimizer(reference, options)
    _train(reference, opt_ref, batches)

    opt_first = build_optimizer(resumed, options)  # dense AdamW for the first half ...
    _train(resumed, opt_first, batches[:8])
    opt_second = build_optimizer(resumed, OptimConfig(**{**vars(options), "sparse_embedding": True}))
    opt_second.load_state_dict(opt_first.state_dict())  # ... then the row-sparse one from its state
    set_sparse_embeddings(resumed)
    _train(resumed, opt_second, batches[8:])
    for a, b in zip(reference.parameters(), resumed.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_sparse_embedding_only_changes_adamw():
    assert type(build_optimizer(_Bag(), OptimConfig(optimizer="Adam", sparse_embedding=True))) is torch.optim.Adam


def test_row_sparse_adamw_refuses_amsgrad():
    model = _Bag()
    set_sparse_embeddings(model)
    opt = RowSparseAdamW(model.parameters(), lr=1e-2, amsgrad=True)
    model(torch.tensor([[1, 2]])).backward()
    with pytest.raises(ValueError, match="amsgrad"):
        opt.step()
