"""Every preset at tiny size: batch invariance (and the release's batch dependence), gradients, precision."""
from __future__ import annotations

import pytest
import torch

from irra_core import losses
from irra_core.config import load_config
from irra_core.model import build_model

PRESETS = ("irra", "php", "irra-cpu", "php-cpu")


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models: one intra-op thread (on a shared, oversubscribed 2-core machine two threads made small ops
    ~40x slower, see benchmarks/bench_model.py); restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
EOT, SOT = 49407, 49406


def make_batch(cfg, batch_size: int = 4, seed: int = 0) -> dict:
    """A synthetic batch in the data layer's format (captions of varied length, zero padding)."""
    gen = torch.Generator().manual_seed(seed)
    height, width = cfg.data.img_size
    length = cfg.data.text_length
    ids = torch.zeros(batch_size, length, dtype=torch.long)
    labels = torch.zeros_like(ids)
    for i in range(batch_size):
        n = 3 + (5 * i) % (length - 4)
        ids[i, 0] = SOT
        ids[i, 1:n] = torch.randint(1, 49405, (n - 1,), generator=gen)
        ids[i, n] = EOT
        labels[i, 1 + i % (n - 1)] = ids[i, 1 + i % (n - 1)]
    mlm_ids = torch.where(labels > 0, torch.full_like(ids, 49405), ids)
    return {"images": torch.randn(batch_size, 3, height, width, generator=gen), "caption_ids": ids,
            "pids": torch.arange(batch_size) // 2, "mlm_ids": mlm_ids, "mlm_labels": labels}


def loss_terms(cfg, outputs: dict, batch: dict) -> dict:
    """The weighted loss terms the engine sums for ``outputs = model(batch)``."""
    return losses.total_loss(outputs, batch, cfg.loss_weights())


def build(preset: str, overrides: dict | None = None, seed: int = 0):
    cfg = load_config(preset, overrides, smoke=True)
    torch.manual_seed(seed)
    return cfg, build_model(cfg, num_classes=8)


def _perturb_experts(model) -> None:
    # PHP starts every expert as the identity (up = 0); random ups make the experts differ
    gen = torch.Generator().manual_seed(1)
    for name, param in model.named_parameters():
        if ".up." in name:
            with torch.no_grad():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("preset", PRESETS)
def test_encoding_does_not_depend_on_the_rest_of_the_batch(preset):
    cfg, model = build(preset)
    _perturb_experts(model)
    model.eval()
    batch = make_batch(cfg, batch_size=5)
    with torch.no_grad():
        images = model.encode_image(batch["images"])
        texts = model.encode_text(batch["caption_ids"])
        shuffled = model.encode_image(batch["images"].flip(0)).flip(0)
        for i in range(5):
            torch.testing.assert_close(model.encode_image(batch["images"][i:i + 1])[0], images[i], atol=1e-5, rtol=0)
            torch.testing.assert_close(model.encode_text(batch["caption_ids"][i:i + 1])[0], texts[i], atol=1e-5, rtol=0)
    torch.testing.assert_close(shuffled, images, atol=1e-5, rtol=0)
    assert images.dtype == texts.dtype == torch.float32
    assert images.shape == texts.shape == (5, cfg.model.embed_dim)


@pytest.mark.parametrize("preset", ["php", "php-cpu"])
def test_batch_axis_efp_attention_makes_encoding_batch_dependent(preset):
    cfg, model = build(preset, {"model.efp_attention": "batch"})
    model.eval()
    batch = make_batch(cfg, batch_size=5)
    with torch.no_grad():
        together = model.encode_image(batch["images"])
        alone = model.encode_image(batch["images"][:1])
        other_mates = model.encode_image(torch.cat([batch["images"][:1], batch["images"][1:] * -1.0]))
        text_together = model.encode_text(batch["caption_ids"])
        text_alone = model.encode_text(batch["caption_ids"][:1])
    assert (together[0] - alone[0]).abs().max() > 1e-3
    assert (together[0] - other_mates[0]).abs().max() > 1e-3
    assert (text_together[0] - text_alone[0]).abs().max() > 1e-3


@pytest.mark.parametrize("preset", PRESETS)
def test_one_training_step_reaches_every_parameter_without_nans(preset):
    cfg, model = build(preset)
    model.train()
    batch = make_batch(cfg)
    outputs = model(batch)
    out = loss_terms(cfg, outputs, batch)
    assert set(out) == {f"{n}_loss" for n in cfg.loss_names()}
    loss = sum(out.values())
    assert torch.isfinite(loss)
    loss.backward()
    zero = []
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        if param.grad.abs().sum() == 0:
            zero.append(name)
    # with PHP's identity experts (up = 0) nothing upstream of `up` can get a gradient in step one, and an
    # expert that no token selected (top-k routing) gets none at all
    routing = losses.batch_metrics(outputs, batch).get("routing", {"image": [], "text": []})
    unselected = {f"resblocks.{layer}.moe.experts.{e}."
                  for layer, (image, text) in enumerate(zip(routing["image"], routing["text"]))
                  for e in range(cfg.model.num_experts) if image["counts"][e] + text["counts"][e] == 0}
    assert all((".experts." in n and (".down." in n or ".norm." in n)) or any(u in n for u in unselected)
               for n in zero), zero
    if cfg.model.arch == "php":
        assert zero, "expected the identity-initialised experts' down/norm to have zero gradient in step one"


@pytest.mark.parametrize("preset", ["php", "php-cpu"])
def test_every_expert_parameter_learns_once_experts_differ(preset):
    cfg, model = build(preset)
    _perturb_experts(model)
    batch = make_batch(cfg, batch_size=6)
    outputs = model(batch)
    sum(loss_terms(cfg, outputs, batch).values()).backward()
    routing = losses.batch_metrics(outputs, batch)["routing"]
    # an expert that no token selected in either pass gets no gradient (top-k routing); every other does
    unselected = {f"resblocks.{layer}.moe.experts.{e}."
                  for layer, (image, text) in enumerate(zip(routing["image"], routing["text"]))
                  for e in range(cfg.model.num_experts) if image["counts"][e] + text["counts"][e] == 0}
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert all(any(u in n for u in unselected) for n in zero), zero


def test_php_routing_is_returned_per_pass_not_accumulated():
    cfg, model = build("php-cpu", {"model.moe_layers": 2})
    model.eval()
    batch = make_batch(cfg, batch_size=4)
    with torch.no_grad():
        first = losses.batch_metrics(model(batch), batch)["routing"]
        second = losses.batch_metrics(model(batch), batch)["routing"]
    assert set(first) == {"image", "text"} and len(first["image"]) == 2
    tokens = 4 * cfg.model.cnum * cfg.model.topk
    for modality in ("image", "text"):
        for a, b in zip(first[modality], second[modality]):
            assert a["counts"].dtype == torch.int64 and a["counts"].shape == (cfg.model.num_experts,)
            assert int(a["counts"].sum()) == tokens  # this pass only: no accumulation
            assert torch.equal(a["counts"], b["counts"]) and not a["aux"].requires_grad
    assert not any("count" in name for name in model.state_dict())


def test_task_gate_per_modality_and_shared():
    _, modality = build("php-cpu")
    _, shared = build("php-cpu", {"model.moe_gating": "shared"})
    assert hasattr(modality.efp.resblocks[0].moe, "task_gate_text")
    assert modality.efp.resblocks[0].moe.task_gate_text is not None
    assert shared.efp.resblocks[0].moe.task_gate_text is None
    names = [n for n, _ in modality.named_parameters() if "task_gate_text" in n]
    assert names and all("moe.task_gate" in n for n in names)  # keeps the optimiser's MoE lr rule


def test_crfm_masks_text_padding_unless_attending_padding():
    cfg, model = build("php-cpu")
    model.eval()
    ids = make_batch(cfg, batch_size=2)["caption_ids"]
    noisy_pad = ids.clone()
    eot = ids.argmax(dim=1)
    for i in range(2):
        noisy_pad[i, eot[i] + 1:] = 123  # change only positions after EOT
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(noisy_pad), model.encode_text(ids), atol=1e-6, rtol=0)
        model.crfm_attend_padding = True
        assert (model.encode_text(noisy_pad) - model.encode_text(ids)).abs().max() > 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("preset", ["irra-cpu", "php-cpu"])
def test_autocast_forward_and_backward(preset, dtype):
    cfg, model = build(preset)
    batch = make_batch(cfg)
    with torch.autocast("cpu", dtype=dtype):
        out = loss_terms(cfg, model(batch), batch)
        image = model.encode_image(batch["images"])
    assert image.dtype == torch.float32
    loss = sum(out.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("preset", ["irra-cpu", "php-cpu"])
def test_legacy_fp16_converts_like_irra_and_stays_close_to_fp32(preset):
    cfg, fp32 = build(preset)
    _, legacy = build(preset, {"model.precision": "legacy_fp16"})
    sd = legacy.state_dict()
    assert sd["base_model.visual.conv1.weight"].dtype == torch.float16
    assert sd["base_model.visual.transformer.resblocks.0.attn.in_proj_weight"].dtype == torch.float16
    assert sd["base_model.text_projection"].dtype == torch.float16 and sd["base_model.visual.proj"].dtype == torch.float16
    assert sd["base_model.ln_final.weight"].dtype == torch.float32
    assert sd["base_model.token_embedding.weight"].dtype == torch.float32
    assert sd["base_model.visual.class_embedding"].dtype == torch.float32
    legacy.load_state_dict({k: v.to(sd[k].dtype) for k, v in fp32.state_dict().items()})
    fp32.eval(), legacy.eval()
    batch = make_batch(cfg)
    with torch.no_grad():
        a, b = fp32.encode_image(batch["images"]), legacy.encode_image(batch["images"])
        out = loss_terms(cfg, legacy(batch), batch)
    assert b.dtype == torch.float32
    torch.testing.assert_close(b, a, atol=0.05, rtol=0.05)  # fp16 rounding of weights and activations
    assert out and all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("preset", ["irra-cpu", "php-cpu"])
def test_trimming_text_padding_is_exact(preset):
    cfg, model = build(preset)
    model.eval()
    ids = make_batch(cfg, batch_size=3)["caption_ids"]
    assert int(ids.argmax(dim=1).max()) + 1 < ids.shape[1]  # there is padding to trim
    with torch.no_grad():
        model.prune_to_global_token = False  # trimming alone (pruning packs captions, which also drops padding)
        trimmed = model.encode_text(ids)
        model.trim_text_padding = False
        full = model.encode_text(ids)
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=0)
