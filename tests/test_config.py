"""The typed configuration schema: presets, YAML files, dotted overrides, named errors, reference options."""
from __future__ import annotations

import pytest

from irra_core.config import (Config, ConfigError, config_from_dict, config_from_reference_args, list_presets,
                              load_config, preset_for, save_config)
from irra_core.runs import RunDir


@pytest.mark.parametrize("name", ["irra", "php", "irra-cpu", "php-cpu"])
def test_presets_load_and_round_trip(name, tmp_path):
    cfg = load_config(name)
    assert cfg.name == name
    save_config(cfg, tmp_path / "config.yaml")
    again = RunDir(tmp_path).load_config()
    assert again.to_dict() == cfg.to_dict()
    assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_list_presets_and_families():
    assert {"irra", "php", "irra-cpu", "php-cpu", "smoke"} <= set(list_presets())
    assert preset_for("php", "cpu") == "php-cpu" and preset_for("irra", "paper") == "irra"
    with pytest.raises(ConfigError, match="family"):
        preset_for("php", "tpu")


def test_php_cpu_extends_irra_cpu_and_smoke_keeps_switches():
    base, php = load_config("irra-cpu"), load_config("php-cpu")
    assert php.model.vision_width == base.model.vision_width and php.model.arch == "php"
    smoke = load_config("php", {"model.efp_attention": "batch"}, smoke=True)
    assert smoke.model.arch == "php" and smoke.model.efp_attention == "batch"  # switches survive smoke
    assert smoke.train.device == "cpu" and smoke.model.vision_width == 32 and smoke.data.dataset == "synthetic"


def test_overrides_dotted_and_nested():
    cfg = load_config("irra-cpu", {"optim.lr": 3e-4, "train": {"seed": 7}, "name": "x"})
    assert cfg.optim.lr == 3e-4 and cfg.train.seed == 7 and cfg.name == "x"


def test_yaml_string_floats_are_coerced():
    assert load_config(None, {"optim.lr": "1e-5"}).optim.lr == 1e-5  # YAML 1.1 reads 1e-5 as a string


@pytest.mark.parametrize("overrides,named", [
    ({"optim.lrr": 1}, "optim.lrr"),
    ({"nosection.lr": 1}, "nosection.lr"),
    ({"train.num_epoch": "sixty"}, "train.num_epoch"),
    ({"train.num_epoch": 1.5}, "train.num_epoch"),
    ({"data.img_aug": "yes"}, "data.img_aug"),
    ({"optim.lr": "fast"}, "optim.lr"),
    ({"model.arch": "clip"}, "model.arch"),
    ({"loss.names": "sdm+xyz"}, "xyz"),
    ({"loss.names": "sdm+mlm", "data.mlm": False}, "data.mlm"),
    ({"loss.names": "sdm+aux", "model.arch": "irra"}, "aux"),
    ({"model.topk": 5, "model.num_experts": 4}, "model.topk"),
    ({"model.temperature": 0.0}, "model.temperature"),
    ({"data.img_size": [384]}, "data.img_size"),
    ({"model.vision_width": 100, "model.vision_heads": 3}, "vision_width"),
    ({"data.synthetic_test_captions_per_image": -1}, "data.synthetic_test_captions_per_image"),
    ({"data.synthetic_test_images_per_id": -2}, "data.synthetic_test_images_per_id"),
])
def test_bad_keys_and_values_name_the_key(overrides, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, overrides)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'phpp'"):
        load_config("phpp")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_file_with_base_and_errors(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("base: irra-cpu\nname: mine\noptim:\n  lr: 2.0e-4\n")
    cfg = load_config(good)
    assert cfg.name == "mine" and cfg.optim.lr == 2e-4
    assert cfg.model.vision_width == load_config("irra-cpu").model.vision_width  # the rest comes from the base
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 1\n  bogus: 2\n")
    with pytest.raises(ConfigError, match="optim.bogus"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_reference_args_without_base_take_the_release_behaviour():
    # a PHP configs.yaml: release switches (shared gate, CRFM over padding, ITC x5, MLM x0.5)
    cfg = config_from_reference_args({"cnum": 9, "loss_names": "sdm+itc+aux", "lr": 3e-6})
    assert cfg.model.arch == "php" and cfg.model.moe_gating == "shared" and cfg.model.crfm_attend_padding
    assert cfg.loss.weights["itc"] == 5.0 and cfg.loss.weights["mlm"] == 0.5
    # on a preset, the preset's (correct) switches stay
    cfg = config_from_reference_args({"cnum": 9, "loss_names": "sdm+itc+aux"}, base="php")
    assert cfg.model.moe_gating == "modality" and not cfg.model.crfm_attend_padding
    # IRRA options leave the architecture alone; ignored options are accepted
    cfg = config_from_reference_args({"MLM": True, "loss_names": "sdm+mlm+id", "local_rank": 0, "output_dir": "x"})
    assert cfg.model.arch == "irra" and cfg.data.mlm


def test_reference_args_unknown_option_is_named():
    with pytest.raises(ConfigError, match="'moe_factor'"):
        config_from_reference_args({"moe_factor": 2.0})


def test_defaults_are_the_schema():
    assert load_config(None).to_dict() == Config().to_dict()


def test_loss_weights_new_and_older_keys():
    cfg = load_config("php-cpu")
    assert cfg.loss_weights() == {"sdm": 1.0, "itc": 5.0, "aux": 0.5}  # the preset's weights: {itc: 5, aux: 0.5}
    older = load_config("php-cpu", {"loss.itc_weight": 2, "loss.aux_weight": "0.25"})  # keys before loss.weights
    newer = load_config("php-cpu", {"loss.weights": {"itc": 2}, "loss.weights.aux": 0.25})
    assert older.loss.weights == newer.loss.weights and newer.loss_weights() == {"sdm": 1.0, "itc": 2.0, "aux": 0.25}
    # a run folder's config.yaml written before loss.weights existed still loads
    saved = newer.to_dict()
    saved["loss"] = {"names": "sdm+itc+aux", "sdm_weight": 1.0, "itc_weight": 2.0, "aux_weight": 0.25}
    assert config_from_dict(saved).loss_weights() == newer.loss_weights() == {"sdm": 1.0, "itc": 2.0, "aux": 0.25}
    with pytest.raises(ConfigError, match="loss.weights"):
        load_config(None, {"loss.weights": 3})
    with pytest.raises(ConfigError, match="loss.weights.sdm"):
        load_config(None, {"loss.weights.sdm": "heavy"})


def test_architecture_only_losses_agree_with_the_model_registry():
    from irra_core.config import ARCH_ONLY_LOSSES, CHOICES
    from irra_core.model.architectures import ARCHITECTURES

    assert set(CHOICES["model.arch"]) == set(ARCHITECTURES)
    for loss, providers in ARCH_ONLY_LOSSES.items():
        assert loss in config_from_dict({}).loss.weights and set(providers) <= set(ARCHITECTURES)
    with pytest.raises(ConfigError, match="'aux'.*'model.arch' is 'irra'; only php"):
        config_from_dict({"loss": {"names": "sdm+aux"}})
    assert config_from_dict({"model": {"arch": "php"}, "loss": {"names": "sdm+aux"}}).loss_names() == ["sdm", "aux"]
