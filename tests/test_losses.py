"""Losses: parity with IRRA's objectives (tests/fixtures/loss_cases.pt) and hand-computed tiny cases."""
from __future__ import annotations

import math

import pytest
import torch

from irra_core import losses

RTOL = ATOL = 1e-5  # the fixture README's tolerance (float32 vs float64 differ by <= 1.4e-6 here)


@pytest.fixture(scope="module")
def loss_cases(fixtures_dir):
    return torch.load(fixtures_dir / "loss_cases.pt", weights_only=True)["cases"]


@pytest.mark.parity
@pytest.mark.parametrize("which", ["sdm", "itc", "cmpm", "id"])
def test_parity_with_irra_fixture(loss_cases, which):
    assert loss_cases, "loss_cases.pt holds no cases"
    for case in loss_cases:
        image, text, pids, scale = case["image_feats"], case["text_feats"], case["pids"], case["logit_scale"]
        if which == "sdm":
            value = losses.compute_sdm(image, text, pids, scale)
        elif which == "itc":
            value = losses.compute_itc(image, text, scale)
        elif which == "cmpm":
            value = losses.compute_cmpm(image, text, pids)
        else:
            # the fixture's logits index classes by the (non-contiguous) pids directly
            value = losses.compute_id(case["id"]["image_logits"], case["id"]["text_logits"], pids)
        expected = case[which]["value"] if which == "id" else case[which]
        assert value.dtype == torch.float32
        torch.testing.assert_close(value.double(), torch.tensor(expected, dtype=torch.float64),
                                   rtol=RTOL, atol=ATOL, msg=lambda m: f"{case['name']} {which}: {m}")
        # float64 inputs reproduce the reference's float64 run more tightly (its targets stay float32,
        # IRRA builds them with ``.float()``, hence 1e-6 rather than 1e-12)
        value64 = {"sdm": lambda: losses.compute_sdm(image.double(), text.double(), pids, scale),
                   "itc": lambda: losses.compute_itc(image.double(), text.double(), scale),
                   "cmpm": lambda: losses.compute_cmpm(image.double(), text.double(), pids),
                   "id": lambda: losses.compute_id(case["id"]["image_logits"].double(),
                                                   case["id"]["text_logits"].double(), pids)}[which]()
        assert value64.item() == pytest.approx(case["fp64"][which], rel=1e-6, abs=1e-7)


def test_sdm_hand_computed_two_pairs():
    # two different identities, orthogonal features: p_ii = e^s / (e^s + 1), targets = identity matrix
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = image.clone() * 3.0  # scale must not matter (features are normalised)
    s = 2.0
    p = math.exp(s) / (math.exp(s) + 1)
    one_direction = p * (math.log(p) - math.log(1 + 1e-8)) + (1 - p) * (math.log(1 - p) - math.log(1e-8))
    value = losses.compute_sdm(image, text, torch.tensor([3, 7]), s)
    assert value.item() == pytest.approx(2 * one_direction, rel=1e-5)


def test_sdm_same_identity_targets_are_uniform():
    # all four samples share one pid and all features are equal -> p == q == 1/4 -> loss ~ 0
    feats = torch.ones(4, 3)
    value = losses.compute_sdm(feats, feats, torch.tensor([5, 5, 5, 5]), 50.0)
    assert abs(value.item()) < 1e-6


def test_sdm_targets_spread_each_row_over_the_same_identity():
    # pids 7, 3, 7, 7, 3: row 0 has three positives (0, 2, 3), row 1 two (1, 4)
    q = losses.sdm_targets(torch.tensor([7, 3, 7, 7, 3]))
    third, half = 1 / 3, 1 / 2
    expected = torch.tensor([[third, 0, third, third, 0], [0, half, 0, 0, half], [third, 0, third, third, 0],
                             [third, 0, third, third, 0], [0, half, 0, 0, half]])
    torch.testing.assert_close(q, expected)
    assert q.dtype == torch.float32 and losses.sdm_targets(torch.tensor([1, 2]), torch.float64).dtype == torch.float64


def test_itc_hand_computed():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # text 1 points at image 0
    s = 1.0
    # logits = [[1, 1], [0, 0]]; rows: CE row0 (target 0) = log 2, row1 (target 1) = log 2
    # columns: logits^T = [[1, 0], [1, 0]]; CE row0 (target 0) = log(1+e^-1), row1 (target 1) = 1 + log(1+e^-1)
    expected = (math.log(2) + (2 * math.log(1 + math.exp(-1)) + 1) / 2) / 2
    assert losses.compute_itc(image, text, s).item() == pytest.approx(expected, rel=1e-6)


def test_id_is_mean_of_two_cross_entropies():
    image_logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    text_logits = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    pids = torch.tensor([0, 1])
    ce_image = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    ce_text = (math.log(2) + math.log(1 + math.exp(-3))) / 2
    assert losses.compute_id(image_logits, text_logits, pids).item() == pytest.approx((ce_image + ce_text) / 2)


def test_cmpm_uses_l2_normalised_targets():
    # two samples of one identity: q_ij = 1 / sqrt(2); equal features -> p_ij = 1/2
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    expected_one = 2 * 0.5 * (math.log(0.5) - math.log(1 / math.sqrt(2) + 1e-8))
    value = losses.compute_cmpm(feats, feats, torch.tensor([1, 1]))
    assert value.item() == pytest.approx(2 * expected_one, rel=1e-6)
    assert value.item() < 0  # L2 targets do not sum to one, so CMPM can be negative (as in IRRA)


def test_mlm_ignores_label_zero():
    scores = torch.tensor([[0.0, 5.0, 0.0], [9.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([1, 0, 2])  # the middle position is not masked
    expected = (math.log(2 + math.exp(5)) - 5 + math.log(2 + math.e) - 1) / 2
    assert losses.compute_mlm(scores, labels).item() == pytest.approx(expected, rel=1e-6)


def test_moe_aux_loss_balanced_and_collapsed():
    num_experts, k = 4, 2
    # balanced: uniform gate probabilities, each expert chosen by half of the tokens -> k / E
    logits = torch.zeros(8, num_experts)
    topk = torch.tensor([[0, 1], [2, 3]] * 4)
    assert losses.moe_aux_loss(logits, topk, num_experts).item() == pytest.approx(k / num_experts)
    # collapsed: every token sends its mass and its top-2 to experts 0 and 1
    logits = torch.tensor([[10.0, 10.0, -10.0, -10.0]]).repeat(8, 1)
    topk = torch.tensor([[0, 1]]).repeat(8, 1)
    value = losses.moe_aux_loss(logits, topk, num_experts).item()
    assert value == pytest.approx(1.0, abs=1e-6)  # P = (1/2, 1/2, 0, 0), f = (1, 1, 0, 0)
    assert value > k / num_experts


def test_moe_aux_loss_hand_computed_and_differentiable():
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], requires_grad=True)
    topk = torch.tensor([[0], [1]])
    probs = logits.detach().softmax(-1)
    mean_prob = probs.mean(0)
    expected = (mean_prob[0] * 0.5 + mean_prob[1] * 0.5).item()
    value = losses.moe_aux_loss(logits, topk, 3)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # fp16 / bf16 inputs are computed in float32
    assert losses.moe_aux_loss(logits.detach().bfloat16(), topk, 3).dtype == torch.float32


def test_gather_is_an_argument_of_total_loss():
    calls = []

    def fake_gather(image, text, pids):
        calls.append(image.shape[0])
        return torch.cat([image, image]), torch.cat([text, text]), torch.cat([pids, pids])

    image, text, pids = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 2])
    outputs, batch = {"image_feats": image, "text_feats": text, "logit_scale": 10.0}, {"pids": pids}
    weights = {"sdm": 1.0, "itc": 1.0, "cmpm": 1.0}
    local = losses.total_loss(outputs, batch, weights)
    torch.testing.assert_close(local["sdm_loss"], losses.compute_sdm(image, text, pids, 10.0))
    gathered = losses.total_loss(outputs, batch, weights, gather=fake_gather)
    assert calls == [3, 3, 3]  # each contrastive loss sees the global batch
    torch.testing.assert_close(gathered["sdm_loss"], losses.compute_sdm(*fake_gather(image, text, pids), 10.0))
    assert not torch.allclose(local["sdm_loss"], gathered["sdm_loss"])  # the duplicated batch changes the targets
    torch.testing.assert_close(losses.total_loss(outputs, batch, weights)["sdm_loss"], local["sdm_loss"])  # no state


def test_total_loss_weighs_each_registered_loss_and_rejects_unknown_names():
    gen = torch.Generator().manual_seed(0)
    image, text = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
    pids = torch.tensor([0, 0, 1, 2])
    logits = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    outputs = {"image_feats": image, "text_feats": text, "logit_scale": 50.0,
               "image_logits": logits[0], "text_logits": logits[1]}
    terms = losses.total_loss(outputs, {"pids": pids}, {"itc": 5.0, "id": 0.5})
    assert list(terms) == ["itc_loss", "id_loss"]
    torch.testing.assert_close(terms["itc_loss"], 5.0 * losses.compute_itc(image, text, 50.0))
    torch.testing.assert_close(terms["id_loss"], 0.5 * losses.compute_id(*logits, pids))
    with pytest.raises(KeyError, match="xyz"):
        losses.total_loss(outputs, {"pids": pids}, {"xyz": 1.0})


def test_a_loss_with_a_weight_but_no_function_is_refused_when_the_model_is_built():
    from irra_core.config import ConfigError, load_config
    from irra_core.model import build_model

    cfg = load_config("irra-cpu", {"loss.names": "sdm+nothing", "loss.weights.nothing": 1.0}, smoke=True)
    with pytest.raises(ConfigError, match="nothing"):
        build_model(cfg, num_classes=4)
