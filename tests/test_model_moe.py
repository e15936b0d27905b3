"""PHP's CRFM and EFP mixture of adapters: vectorised dispatch, top-k, routing weights, switches."""
from __future__ import annotations

import math

import pytest
import torch

from irra_core.model.php import CRFM, EFP, MoEAdapters
from test_model_presets import single_thread  # noqa: F401  (module-scoped, autouse)


def _layer(modality_gates: bool = False, dropout: float = 0.0) -> MoEAdapters:
    torch.manual_seed(0)
    layer = MoEAdapters(16, num_experts=4, topk=2, reduction=4, dropout=dropout, modality_gates=modality_gates)
    with torch.no_grad():
        for expert in layer.experts:
            expert.up.weight.normal_(0, 0.5)
            expert.up.bias.normal_(0, 0.1)
            expert.norm.weight.normal_(1, 0.1)
            expert.norm.bias.normal_(0, 0.1)
    return layer


def test_vectorised_dispatch_equals_a_loop_over_selected_experts():
    layer = _layer()
    z = torch.randn(3, 5, 16)
    task = torch.randn(16)
    y, routing = layer(z, task, "image")
    expected = torch.zeros_like(z)
    for b in range(3):
        for t in range(5):
            for slot in range(2):
                e = int(routing.topk[b, t, slot])
                expected[b, t] += routing.weights[b, t, slot] * layer.experts[e](z[b, t])
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_topk_sorted_weights_renormalised_and_gate_mixes_alpha():
    layer = _layer()
    z, task = torch.randn(2, 4, 16), torch.randn(16)
    _, routing = layer(z, task, "image")
    logits = routing.gate_logits
    top = logits.topk(2, dim=-1)
    assert torch.equal(routing.topk, top.indices)
    torch.testing.assert_close(routing.weights, top.values.softmax(-1))
    torch.testing.assert_close(routing.weights.sum(-1), torch.ones(2, 4))
    alpha = layer.alpha.detach()
    manual = (1 - alpha) * layer.input_gate(z) + alpha * layer.task_gate(task)
    torch.testing.assert_close(logits, manual)
    assert routing.aux >= 0 and routing.counts(4).sum() == 2 * 4 * 2


def test_aux_is_k_over_e_at_perfect_balance():
    layer = _layer()
    with torch.no_grad():
        layer.input_gate.weight.zero_()
        layer.task_gate.weight.zero_()
    _, routing = layer(torch.randn(2, 4, 16), torch.randn(16), "image")
    # equal logits: uniform softmax; f_e depends on tie-breaking but sum_e P_e f_e = (1/E) * k
    assert math.isclose(float(routing.aux.detach()), 2 / 4, rel_tol=1e-6)


def test_modality_gates_differ_and_shared_gate_is_one():
    layer = _layer(modality_gates=True)
    z, task = torch.randn(2, 4, 16), torch.randn(16)
    image = layer.gate_logits(z, task, "image")
    text = layer.gate_logits(z, task, "text")
    assert (image - text).abs().max() > 1e-4
    shared = _layer(modality_gates=False)
    torch.testing.assert_close(shared.gate_logits(z, task, "image"), shared.gate_logits(z, task, "text"))


def test_experts_start_as_identity():
    layer = MoEAdapters(16, num_experts=4, topk=2, reduction=4, dropout=0.1, modality_gates=False)
    z = torch.randn(2, 3, 16)
    y, _ = layer.eval()(z, torch.randn(16), "text")
    torch.testing.assert_close(y, z)  # PHP's zero up-projection: every expert is the identity


@pytest.mark.parametrize("attention", ["tokens", "batch"])
def test_efp_attention_axis(attention):
    torch.manual_seed(0)
    efp = EFP(16, layers=2, heads=2, num_experts=4, topk=2, reduction=4, dropout=0.0, attention=attention).eval()
    x = torch.randn(4, 3, 16)
    with torch.no_grad():
        together, routing = efp(x, "image")
        alone, _ = efp(x[:1], "image")
    assert len(routing) == 2 and routing[0].gate_logits.shape == (4, 3, 4)
    difference = (together[0] - alone[0]).abs().max()
    assert difference < 1e-5 if attention == "tokens" else difference > 1e-3


def test_crfm_pooling_definition_and_mask():
    torch.manual_seed(0)
    crfm = CRFM(8, cnum=3).eval()
    tokens = torch.randn(2, 5, 8)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with torch.no_grad():
        out = crfm(tokens, valid)
        weights = (crfm.part_tokens @ tokens[1, :3].T).softmax(-1)
        expected = crfm.feed((weights @ tokens[1, :3]) / math.sqrt(8))
    torch.testing.assert_close(out[1], expected, atol=1e-5, rtol=1e-5)
