"""The reference-style baseline (benchmarks/reference_style.py) computes what irra_core computes, the way the
IRRA reference executes it: same features and losses from the same weights, IRRA's optimiser layout, and a
text tower that always runs at the full context. Tiny (smoke) sizes, batch 4."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import load_bench_config, synthetic_batch  # noqa: E402
from benchmarks.reference_style import ReferenceStyleCLIP, build_reference_style  # noqa: E402
from irra_core import losses  # noqa: E402
from irra_core.model import build_model  # noqa: E402
from test_model_presets import single_thread  # noqa: E402,F401  (module-scoped, autouse)

#: float32 features of the two implementations (SDPA batch-first vs MultiheadAttention sequence-first,
#: trimmed vs full-context text) differ only by rounding
FEATURE_ATOL = 1e-5


@pytest.fixture()
def cfg():
    return load_bench_config("S", "irra", smoke=True)


def _varied_batch(cfg, batch_size: int = 4) -> dict:
    """A synthetic batch whose captions end (EOT) at different positions, zero-padded to the context."""
    batch = synthetic_batch(cfg, batch_size, seed=1)
    ids = batch["caption_ids"]
    for i, eot in enumerate(torch.linspace(3, cfg.data.text_length - 1, batch_size).long().tolist()):
        ids[i, eot] = 49407
        ids[i, eot + 1:] = 0
    return batch


def test_same_weights_give_our_features_and_losses(cfg):
    torch.manual_seed(0)
    ours = build_model(cfg, num_classes=64).eval()
    ref = ReferenceStyleCLIP(cfg).eval()
    ref.load_state_dict(ours.base_model.state_dict(), strict=True)
    ours.base_model.load_state_dict(ref.state_dict(), strict=True)  # and back: the layouts are the same
    batch = _varied_batch(cfg)
    eots = batch["caption_ids"].argmax(dim=1)
    assert len(set(eots.tolist())) == 4 and int(eots.max()) == cfg.data.text_length - 1
    with torch.no_grad():
        image_ref, text_ref = ref.global_features(batch["images"], batch["caption_ids"])
        image_ours, text_ours = ours.encode_image(batch["images"]), ours.encode_text(batch["caption_ids"])
        losses_ref, losses_ours = ref(batch), losses.total_loss(ours(batch), batch, cfg.loss_weights())
    assert image_ref.dtype == text_ref.dtype == torch.float32
    assert image_ref.shape == text_ref.shape == (4, cfg.model.embed_dim)
    torch.testing.assert_close(image_ref, image_ours, atol=FEATURE_ATOL, rtol=0)
    torch.testing.assert_close(text_ref, text_ours, atol=FEATURE_ATOL, rtol=0)
    assert {k for k in losses_ref if k.endswith("_loss")} == {"sdm_loss", "itc_loss"}
    for key in ("sdm_loss", "itc_loss"):
        torch.testing.assert_close(losses_ref[key], losses_ours[key], atol=1e-5, rtol=1e-5)


def test_optimizer_is_irra_per_parameter_for_loop_adam(cfg):
    torch.manual_seed(0)
    model, optimizer = build_reference_style(cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert model.training and isinstance(optimizer, torch.optim.Adam)
    assert len(optimizer.param_groups) == len(trainable)
    assert all(len(g["params"]) == 1 for g in optimizer.param_groups)
    assert [g["params"][0] for g in optimizer.param_groups] == trainable
    assert optimizer.defaults["eps"] == 1e-3
    assert optimizer.defaults["foreach"] is False and optimizer.defaults["fused"] is False
    bias_group = next(g for g, (n, _) in zip(optimizer.param_groups, model.named_parameters()) if "bias" in n)
    assert bias_group["lr"] == cfg.optim.lr * cfg.optim.bias_lr_factor
    assert bias_group["weight_decay"] == cfg.optim.weight_decay_bias

    before = [p.detach().clone() for p in trainable]
    out = model(synthetic_batch(cfg, 4))
    loss = sum(v for k, v in out.items() if k.endswith("_loss"))
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    unchanged = [n for (n, p), b in zip(model.named_parameters(), before) if torch.equal(p, b)]
    assert not unchanged


def test_text_tower_runs_at_full_context_whatever_the_captions(cfg):
    model, _ = build_reference_style(cfg)
    lengths: list[int] = []
    first = model.transformer.resblocks[0]
    handle = first.register_forward_hook(lambda module, args, out: lengths.append(args[0].shape[0]))
    try:
        batch = _varied_batch(cfg)
        short = batch["caption_ids"].clone()
        short[:, 5:] = 0
        short[:, 4] = 49407  # every caption ends at token 4
        with torch.no_grad():
            model.global_features(batch["images"], batch["caption_ids"])
            model.global_features(batch["images"], short)
    finally:
        handle.remove()
    assert lengths == [cfg.data.text_length] * 2  # sequence-first (N, B, D): N is the whole context
    with pytest.raises(ValueError, match="full context"):
        model.encode_text(short[:, :8])


def test_rejects_objectives_outside_config_s():
    cfg = load_bench_config("S", "irra", smoke=True, extra={"loss.names": "sdm+mlm+id", "data.mlm": True})
    with pytest.raises(ValueError, match="mlm"):
        ReferenceStyleCLIP(cfg)


@pytest.mark.parametrize("extra", [{"model.conv_stem": True}, {"model.text_conv": 3}])
def test_rejects_the_cpu_presets_tower_deviations(extra):
    cfg = load_bench_config("S", "irra", smoke=True, extra=extra)
    with pytest.raises(ValueError, match="model.conv_stem=false and model.text_conv=0"):
        ReferenceStyleCLIP(cfg)
