"""Fixture parity: IRRA and PHP checkpoints imported with load_reference_run reproduce the reference outputs.

Tolerances from ../shared/reference/README.md (the checkpoints stay there; see tests/fixtures/README.md): features and losses atol = rtol = 1e-4, top-k experts exact.
"""
from __future__ import annotations

import shutil

import pytest
import torch

from irra_core import losses
from irra_core.model import load_reference_run
from irra_core.model.capture import capture_routing
from irra_core.model.reference import read_reference_options, read_state_dict
from test_model_presets import single_thread  # noqa: F401  (module-scoped, autouse)

pytestmark = pytest.mark.parity

BATCH_KEYS = ("images", "caption_ids", "pids", "mlm_ids", "mlm_labels")


def _logged(model, batch: dict) -> dict:
    """What the reference's forward returned and our training log reports: weighted losses and metrics."""
    outputs = model(batch)
    return {**losses.batch_metrics(outputs, batch), **losses.total_loss(outputs, batch, model.cfg.loss_weights())}


def _close(actual, expected, tolerances: dict, kind: str) -> None:
    atol, rtol = tolerances[f"{kind}_atol"], tolerances[f"{kind}_rtol"]
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32),
                               torch.as_tensor(expected, dtype=torch.float32), atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def irra(reference_dir):
    io = torch.load(reference_dir / "irra_tiny" / "io.pt", weights_only=True)
    return load_reference_run(reference_dir / "irra_tiny"), io


@pytest.fixture(scope="module")
def php_io(reference_dir):
    return torch.load(reference_dir / "php_tiny" / "io.pt", weights_only=True)


def test_irra_configs_yaml_has_python_tuples_and_is_read_safely(reference_dir):
    text = (reference_dir / "irra_tiny" / "configs.yaml").read_text()
    assert "!!python/tuple" in text
    options = read_reference_options(reference_dir / "irra_tiny" / "configs.yaml")
    assert options["img_size"] == (96, 32) and options["milestones"] == (20, 50)


def test_unsafe_yaml_tag_is_refused(tmp_path):
    path = tmp_path / "configs.yaml"
    path.write_text("name: x\nevil: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ValueError, match="safe YAML loader"):
        read_reference_options(path)


def test_irra_tiny_parity(irra):
    model, io = irra
    inputs, expected, tol = io["inputs"], io["expected"], io["tolerances"]["recommended"]
    assert not model.training
    assert model.classifier.out_features == io["num_classes"]
    with torch.no_grad():
        _close(model.encode_image(inputs["images"]), expected["encode_image"], tol, "features")
        _close(model.encode_text(inputs["caption_ids"]), expected["encode_text"], tol, "features")
        out = _logged(model, {k: inputs[k] for k in BATCH_KEYS})
        masked = _logged(model, {**{k: inputs[k] for k in BATCH_KEYS}, "caption_ids": inputs["mlm_ids"]})
        image_tokens = model.base_model.encode_image(inputs["images"])
        cross = model.cross_former(model.base_model.encode_text(inputs["mlm_ids"]), image_tokens)
    assert set(out) == set(expected["forward"])
    for key, value in expected["forward"].items():
        _close(out[key], value, tol, "loss")
    for key, value in expected["forward_with_masked_caption_ids"].items():
        _close(masked[key], value, tol, "loss")
    _close(cross, expected["cross_former_out"], tol, "features")


@pytest.mark.parametrize("mode", ["legacy", "fixed"])
def test_php_tiny_parity(reference_dir, php_io, mode):
    overrides = {} if mode == "legacy" else {"efp_attention": "tokens"}
    model = load_reference_run(reference_dir / "php_tiny", reference_behaviour=True, **overrides)
    inputs, tol = php_io["inputs"], php_io["tolerances"]["recommended"]
    expected, common = php_io["expected"][mode], php_io["expected"]["common"]
    assert model.efp.attention == ("batch" if mode == "legacy" else "tokens")
    with torch.no_grad():
        with capture_routing(model) as routing:
            image = model.encode_image(inputs["images"])
            text = model.encode_text(inputs["caption_ids"])
        out = _logged(model, {k: inputs[k] for k in BATCH_KEYS})
        alone_image = model.encode_image(inputs["images"][:1])
        alone_text = model.encode_text(inputs["caption_ids"][:1])
        image_tokens = model.base_model.encode_image(inputs["images"])
        base_image = image_tokens[:, 0]
        crfm_image = model.crfm(image_tokens[:, 1:], modality="image")
        crfm_text = model.crfm(model.base_model.encode_text(inputs["caption_ids"]), modality="text")
    _close(image, expected["encode_image"], tol, "features")
    _close(text, expected["encode_text"], tol, "features")
    _close(alone_image, expected["encode_image_first_sample_alone"], tol, "features")
    _close(alone_text, expected["encode_text_first_sample_alone"], tol, "features")
    _close(base_image, common["encode_image_base"], tol, "features")
    _close(crfm_image, common["crfm_image"], tol, "features")
    _close(crfm_text, common["crfm_text"], tol, "features")
    assert set(out) - {"routing"} == set(expected["forward"])
    for key, value in expected["forward"].items():
        _close(out[key], value, tol, "loss")
    for modality in ("image", "text"):
        records = [r for r in routing.records if r["modality"] == modality]
        assert [r["layer"] for r in records] == list(range(len(expected[f"aux_per_layer_{modality}"])))
        for record in records:
            layer = record["layer"]
            assert torch.equal(record["topk"][0], expected[f"topk_experts_{modality}_sample0"][layer])
            assert torch.equal(record["topk"], expected[f"topk_experts_{modality}"][layer])
            _close(record["gate_logits"], expected[f"gate_logits_{modality}"][layer], tol, "features")
        _close([float(r["aux"]) for r in out["routing"][modality]], expected[f"aux_per_layer_{modality}"], tol, "loss")


def test_php_default_import_behaves_as_trained_except_efp(reference_dir):
    model = load_reference_run(reference_dir / "php_tiny")
    assert model.efp.attention == "tokens"
    assert model.efp.gating == "shared" and model.crfm_attend_padding
    assert model.cfg.loss.weights["itc"] == 5.0 and model.cfg.loss.weights["aux"] == 0.5
    dropped = model.reference_info["dropped_keys"]
    assert any(k.endswith("expert_count_accum") for k in dropped) and "safl.pos_embeding" in dropped
    assert not any("count" in name for name, _ in model.named_buffers())


def test_overrides_apply_on_top_of_reference_behaviour(reference_dir):
    model = load_reference_run(reference_dir / "php_tiny", reference_behaviour=True, itc_weight=1.0,
                               crfm_attend_padding=False)
    assert model.efp.attention == "batch"
    assert model.cfg.loss.weights["itc"] == 1.0 and not model.crfm_attend_padding
    with pytest.raises(ValueError, match="unknown override"):
        load_reference_run(reference_dir / "php_tiny", no_such_switch=1)


def test_modality_gating_on_a_shared_gate_checkpoint_starts_identical(reference_dir, php_io):
    shared = load_reference_run(reference_dir / "php_tiny")
    modality = load_reference_run(reference_dir / "php_tiny", moe_gating="modality")
    ids = php_io["inputs"]["caption_ids"]
    with torch.no_grad():
        torch.testing.assert_close(modality.encode_text(ids), shared.encode_text(ids), atol=1e-6, rtol=0)
    assert modality.reference_info["notes"]


def test_release_names_are_mapped_to_the_papers_names_at_load_time(reference_dir, php_io):
    """The release's safl / shared_transformer / feed_forward keys load as crfm / efp / moe: through the
    importer (above) and through PHP.load_state_dict (our older run folders hold the release's names)."""
    model = load_reference_run(reference_dir / "php_tiny")
    raw = torch.load(reference_dir / "php_tiny" / "best.pth", map_location="cpu", weights_only=True)
    release = raw.get("model", raw)  # the file as released, names untouched
    assert any(k.startswith("safl.") for k in release) and any(".feed_forward." in k for k in release)
    assert not any(k.startswith(("safl.", "shared_transformer.")) for k in read_state_dict(
        reference_dir / "php_tiny" / "best.pth")), "the reader returns the papers' names"
    ours = model.state_dict()
    assert not any(k.startswith(("safl.", "shared_transformer.")) or ".feed_forward." in k for k in ours)
    assert any(k.startswith("crfm.") for k in ours) and any(k.startswith("efp.") and ".moe." in k for k in ours)
    old_names = {_release_name(k): v for k, v in ours.items()}  # a run folder written before the renaming
    assert old_names.keys() != ours.keys()
    fresh = load_reference_run(reference_dir / "php_tiny")
    with torch.no_grad():
        for param in fresh.parameters():
            param.add_(1.0)
    fresh.load_state_dict(old_names, strict=True)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, ours[key]), key
    ids = php_io["inputs"]["caption_ids"]
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode_text(ids), model.encode_text(ids), atol=0, rtol=0)


def _release_name(key: str) -> str:
    if key.startswith("crfm."):
        key = "safl." + key[len("crfm."):]
    if key.startswith("efp."):
        key = "shared_transformer." + key[len("efp."):]
    return key.replace(".moe.", ".feed_forward.")


def _copy_run(reference_dir, tmp_path, name="irra_tiny"):
    run = tmp_path / name
    run.mkdir()
    shutil.copy(reference_dir / name / "configs.yaml", run / "configs.yaml")
    return run


def test_checkpoint_that_does_not_fit_lists_keys_and_shapes(reference_dir, tmp_path):
    state = read_state_dict(reference_dir / "irra_tiny" / "best.pth")
    state.pop("ln_post.weight")
    state["extra.weight"] = torch.zeros(3)
    state["classifier.bias"] = torch.zeros(5)  # classes come from classifier.weight (11)
    run = _copy_run(reference_dir, tmp_path)
    torch.save({"model": state}, run / "best.pth")
    with pytest.raises(ValueError) as info:
        load_reference_run(run)
    message = str(info.value)
    assert "ln_post.weight" in message and "extra.weight" in message
    assert "classifier.bias: checkpoint (5,) vs model (11,)" in message


def test_checkpoint_needing_arbitrary_unpickling_is_refused(reference_dir, tmp_path):
    run = _copy_run(reference_dir, tmp_path)
    torch.save({"model": {}, "args": _Opaque()}, run / "best.pth")
    with pytest.raises(ValueError, match="arbitrary unpickling"):
        load_reference_run(run)


class _Opaque:
    """A custom class: unpickling it needs more than weights_only allows."""
