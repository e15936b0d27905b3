"""Computing only what the global token depends on (``IRRA.prune_to_global_token``) changes no number.

The last block computes one token per sample (``fast.block_at``); the causal text blocks before it run on
each caption's packed prefix (``fast.transformer_packed``). Both must equal the full computation
gathered at the global token, for the features, the losses and every gradient. Tolerances: 1e-5 absolute
on features (fp32, only the summation order differs), 1e-5 relative on losses, 1e-4 of the largest gradient
entry on gradients.
"""
from __future__ import annotations

import pytest
import torch

from irra_core.model.capture import capture_attention
from irra_core.model import fast
from irra_core.model.clip import Attention, Transformer
from irra_core.model.fast import PrefixPacking
from test_model_presets import build, loss_terms, make_batch, single_thread  # noqa: F401  (module-scoped, autouse)


def _random_prefix_ends(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ends = torch.randint(0, length, (batch,), generator=gen)
    ends[0], ends[-1] = 0, length - 1  # the extremes: a one-token prefix and no padding at all
    return ends


@pytest.mark.parametrize("causal", [False, True])
def test_transformer_output_index_equals_the_full_stack_gathered(causal):
    torch.manual_seed(0)
    stack = Transformer(width=32, layers=3, heads=4)
    x = torch.randn(5, 11, 32)
    index = _random_prefix_ends(5, 11)
    full = stack(x, causal=causal)[torch.arange(5), index]
    pruned = fast.transformer_at(stack, x, index, causal=causal)
    assert pruned.shape == (5, 1, 32)
    torch.testing.assert_close(pruned[:, 0], full, atol=1e-5, rtol=0)


def test_packed_causal_attention_equals_padded_attention_on_the_prefixes():
    torch.manual_seed(1)
    attention = Attention(width=24, heads=3)
    x = torch.randn(4, 9, 24)
    ends = _random_prefix_ends(4, 9, seed=2)
    valid = torch.arange(9)[None, :] <= ends[:, None]
    packing = PrefixPacking(ends, 9)
    torch.testing.assert_close(packing.pack(x), x[valid], atol=0, rtol=0)  # row-major, the prefixes only
    unpacked = packing.unpack(x[valid])
    assert (unpacked[~valid] == 0).all() and torch.equal(unpacked[valid], x[valid])
    expected = attention(x, causal=True)[valid]
    packed = fast.attention_packed(attention, packing.pack(x), packing)
    assert packed.shape == (int(valid.sum()), 24)
    torch.testing.assert_close(packed, expected, atol=1e-5, rtol=0)


def test_padding_content_cannot_reach_the_pruned_text_token():
    """Garbage after each prefix (not zeros) changes nothing: the prefixes really are all that is read."""
    torch.manual_seed(2)
    stack = Transformer(width=16, layers=2, heads=2)
    x = torch.randn(3, 7, 16)
    index = torch.tensor([2, 6, 0])
    noisy = x.clone()
    for row, end in enumerate(index.tolist()):
        noisy[row, end + 1:] = 100 * torch.randn(7 - end - 1, 16)
    torch.testing.assert_close(fast.transformer_at(stack, noisy, index, causal=True),
                               fast.transformer_at(stack, x, index, causal=True), atol=1e-5, rtol=0)


def _loss_and_grads(model, batch) -> tuple[dict, dict]:
    model.zero_grad(set_to_none=True)
    out = loss_terms(model.cfg, model(batch), batch)
    losses = {k: v.detach() for k, v in out.items()}
    sum(out.values()).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return losses, grads


def _assert_switch_changes_no_training_step(model, batch, switch: str) -> None:
    """Losses (1e-5 relative) and every gradient (1e-4 of the largest entry) equal with ``switch`` off and on."""
    setattr(model, switch, False)
    full_losses, full_grads = _loss_and_grads(model, batch)
    setattr(model, switch, True)
    losses, grads = _loss_and_grads(model, batch)
    assert losses.keys() == full_losses.keys()
    for key in losses:
        torch.testing.assert_close(losses[key], full_losses[key], rtol=1e-5, atol=0)
    assert grads.keys() == full_grads.keys()  # every parameter still gets its gradient
    scale = max(g.abs().max() for g in full_grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], atol=1e-4 * float(scale), rtol=0, msg=name)


@pytest.mark.parametrize("loss_names", ["sdm+itc", "sdm+itc+id", "sdm+mlm+id"])
def test_irra_losses_and_gradients_are_unchanged_by_pruning(loss_names):
    cfg, model = build("irra-cpu", {"loss.names": loss_names, "data.mlm": "mlm" in loss_names})
    model.train()
    batch = make_batch(cfg, batch_size=6)
    assert int(batch["caption_ids"].argmax(1).max()) + 1 < cfg.data.text_length
    _assert_switch_changes_no_training_step(model, batch, "prune_to_global_token")


def test_irra_encoders_are_unchanged_by_pruning_and_use_it():
    cfg, model = build("irra-cpu")
    model.eval()
    batch = make_batch(cfg, batch_size=5)
    seen = []
    last = model.base_model.visual.transformer.resblocks[-1]
    handle = last.mlp.register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape)))
    with torch.no_grad():
        pruned = (model.encode_image(batch["images"]), model.encode_text(batch["caption_ids"]))
        model.prune_to_global_token = False
        full = (model.encode_image(batch["images"]), model.encode_text(batch["caption_ids"]))
    handle.remove()
    assert seen[0][1] == 1 and seen[1][1] > 1  # the pruned last block's MLP ran on the CLS token alone
    for a, b in zip(pruned, full):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_capture_still_records_complete_maps_of_every_layer():
    cfg, model = build("irra-cpu")
    model.eval()
    batch = make_batch(cfg, batch_size=2)
    with torch.no_grad():
        expected = model.encode_image(batch["images"])
        with capture_attention(model) as att:
            feats = model.encode_image(batch["images"])
    tokens = 1 + model.base_model.visual.grid[0] * model.base_model.visual.grid[1]
    maps = att.maps["image"]
    assert len(maps) == cfg.model.vision_layers
    assert all(m.shape[-2:] == (tokens, tokens) for m in maps)
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=0)


def test_php_packed_captions_change_no_loss_or_gradient():
    """PHP's CRFM masks padding, so its text tower runs packed prefixes under trim_text_padding."""
    cfg, model = build("php-cpu", {"model.adapter_dropout": 0.0})
    model.train()
    for module in model.modules():  # dropout off: both passes must see the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    batch = make_batch(cfg, batch_size=6)
    _assert_switch_changes_no_training_step(model, batch, "trim_text_padding")


def test_packed_text_tokens_are_zero_after_eot_and_exact_before():
    cfg, model = build("php-cpu")
    model.eval()
    ids = make_batch(cfg, batch_size=4)["caption_ids"]
    eot = ids.argmax(1)
    with torch.no_grad():
        packed = fast.text_tokens_packed(model.base_model, ids, eot)
        full = model.base_model.encode_text(ids)
    valid = torch.arange(ids.shape[1])[None, :] <= eot[:, None]
    assert (packed[~valid] == 0).all()
    torch.testing.assert_close(packed[valid], full[valid], atol=1e-5, rtol=0)


def test_php_keeps_every_token():
    """PHP's CRFM reads every token: pruning must not apply (same outputs, full token count)."""
    cfg, model = build("php-cpu")
    model.eval()
    batch = make_batch(cfg, batch_size=3)
    with torch.no_grad():
        _, tokens, _ = model.image_features(batch["images"], need_tokens=False)
        with_flag = model.encode_text(batch["caption_ids"])
        model.prune_to_global_token = False
        without = model.encode_text(batch["caption_ids"])
    assert tokens.shape[1] == 1 + model.base_model.visual.grid[0] * model.base_model.visual.grid[1]
    torch.testing.assert_close(with_flag, without, atol=0, rtol=0)


def test_no_packing_while_compiling(monkeypatch):
    """Packing selects with a data-dependent mask, which torch.compile cannot trace; under compilation the
    stack runs padded (same result)."""
    torch.manual_seed(3)
    stack = Transformer(width=16, layers=3, heads=2)
    x = torch.randn(3, 7, 16)
    index = torch.tensor([2, 6, 0])
    expected = fast.transformer_at(stack, x, index, causal=True)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(fast, "transformer_packed", lambda *a, **k: pytest.fail("packed while compiling"))
    torch.testing.assert_close(fast.transformer_at(stack, x, index, causal=True), expected, atol=1e-5, rtol=0)
