"""Opt-in capture of attention maps and routing: shapes, probabilities, same outputs, nothing left behind."""
from __future__ import annotations

import torch

from irra_core.model import capture_attention, capture_routing
from irra_core.model.clip import Attention
from test_model_presets import build, loss_terms, make_batch
from test_model_presets import single_thread  # noqa: F401  (module-scoped, autouse)


def test_attention_capture_shapes_and_same_outputs():
    cfg, model = build("irra-cpu")
    model.eval()
    batch = make_batch(cfg, batch_size=3)
    with torch.no_grad():
        plain = loss_terms(cfg, model(batch), batch)
        with capture_attention(model) as att:
            captured = loss_terms(cfg, model(batch), batch)
    for key in ("sdm_loss", "id_loss", "mlm_loss"):
        torch.testing.assert_close(captured[key], plain[key], atol=1e-5, rtol=1e-5)
    grid = model.base_model.visual.grid
    n, length = 1 + grid[0] * grid[1], cfg.data.text_length
    assert att.meta == {"grid": grid, "img_size": tuple(cfg.data.img_size)}
    heads_i, heads_t = cfg.model.vision_heads, cfg.model.text_heads
    assert len(att.maps["image"]) == cfg.model.vision_layers
    assert att.maps["image"][0].shape == (3, heads_i, n, n)
    # forward encodes captions and masked captions: two passes through the text tower
    assert len(att.maps["text"]) == 2 * cfg.model.text_layers
    assert att.maps["text"][0].shape == (3, heads_t, length, length)
    assert att.maps["cross"][0].shape == (3, max(1, cfg.model.embed_dim // 64), length, n)
    for maps in att.maps.values():
        for probs in maps:
            assert probs.dtype == torch.float32 and probs.device.type == "cpu" and not probs.requires_grad
            torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    text = att.maps["text"][0]
    assert torch.all(text.triu(1) == 0)  # causal
    assert all(m.recorder is None for m in model.modules() if isinstance(m, Attention))


def test_crfm_maps_and_routing_capture():
    cfg, model = build("php-cpu")
    model.eval()
    batch = make_batch(cfg, batch_size=3)
    with torch.no_grad():
        with capture_attention(model) as att, capture_routing(model) as rt:
            model.encode_image(batch["images"])
            model.encode_text(batch["caption_ids"])
    grid = model.base_model.visual.grid
    assert att.maps["crfm_image"][0].shape == (3, cfg.model.cnum, grid[0] * grid[1])
    crfm_text = att.maps["crfm_text"][0]
    assert crfm_text.shape == (3, cfg.model.cnum, cfg.data.text_length)
    eot = batch["caption_ids"].argmax(dim=1)
    for i in range(3):  # padding after EOT gets no weight by default
        assert torch.all(crfm_text[i, :, eot[i] + 1:] == 0)
    assert [(r["modality"], r["layer"]) for r in rt.records] == [
        (m, layer) for m in ("image", "text") for layer in range(cfg.model.moe_layers)]
    record = rt.records[0]
    assert record["gate_logits"].shape == (3, cfg.model.cnum, cfg.model.num_experts)
    assert record["topk"].shape == record["weights"].shape == (3, cfg.model.cnum, cfg.model.topk)
    torch.testing.assert_close(record["weights"].sum(-1), torch.ones(3, cfg.model.cnum))
    assert all(getattr(m, "recorder", None) is None for m in model.modules())
