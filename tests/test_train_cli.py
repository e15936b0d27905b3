"""``python -m irra_core.train`` / ``python -m irra_core.test``: reference commands parse to the presets."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
import yaml

from irra_core.config import ConfigError, load_config
from irra_core.train import config_from_argv

SEED_COMMAND = ("--name php --img_aug --batch_size 64 --loss_names 'sdm+itc+aux' --dataset_name 'ICFG-PEDES' "
                "--root_dir DIR --num_epoch 60 --num_experts 4 --topk 2 --reduction 8 --moe_layers 4 --moe_heads 8 "
                "--transformer_lr_factor 1.0 --moe_lr_factor 2.0 --aux_factor 0.5 --lr 3e-6 --cnum 9")
IRRA_COMMAND = ("--name irra --img_aug --batch_size 64 --MLM --dataset_name CUHK-PEDES "
                "--loss_names 'sdm+mlm+id' --num_epoch 60")


def _differences(a: dict, b: dict) -> dict:
    return {f"{s}.{k}": (a[s][k], b[s][k]) for s in a if isinstance(a[s], dict) for k in a[s] if a[s][k] != b[s][k]}


def test_seed_command_parses_to_php_preset():
    cfg, _ = config_from_argv(shlex.split(SEED_COMMAND))
    expected = load_config("php")
    assert _differences(cfg.to_dict(), expected.to_dict()) == {
        "data.dataset": ("ICFG-PEDES", "synthetic"), "data.root": ("DIR", "data")}
    assert cfg.name == "php" and cfg.model.arch == "php" and cfg.optim.lr == 3e-6
    assert cfg.optim.lr_groups == "php_prerelease" and cfg.optim.moe_lr_factor == 2.0


def test_irra_run_script_parses_to_irra_preset():
    cfg, _ = config_from_argv(shlex.split(IRRA_COMMAND))
    assert _differences(cfg.to_dict(), load_config("irra").to_dict()) == {
        "data.dataset": ("CUHK-PEDES", "synthetic")}


def test_seed_command_in_a_subprocess_dry_run():
    proc = subprocess.run([sys.executable, "-m", "irra_core.train", *shlex.split(SEED_COMMAND), "--dry_run"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["model"]["num_experts"] == 4 and printed["loss"]["names"] == "sdm+itc+aux"


def test_unknown_option_is_named(capsys):
    with pytest.raises(SystemExit) as exc:
        config_from_argv(shlex.split(SEED_COMMAND) + ["--moe_lr_facter", "3"])
    assert exc.value.code == 2
    assert "--moe_lr_facter" in capsys.readouterr().err


def test_bad_set_key_and_bad_value_are_named():
    with pytest.raises(ConfigError, match="optim.lrr"):
        config_from_argv(["--set", "optim.lrr=1e-4"])
    with pytest.raises(ConfigError, match="train.num_epoch"):
        config_from_argv(["--set", "train.num_epoch=many"])
    with pytest.raises(ConfigError, match="data.sampler"):
        config_from_argv(["--sampler", "idtentity"])


def test_main_reports_bad_key_with_exit_code_2(capsys):
    from irra_core.train import main

    assert main(["--set", "model.experts=3"]) == 2
    assert "model.experts" in capsys.readouterr().err


def test_preset_config_file_and_overrides(tmp_path):
    cfg, _ = config_from_argv(["--preset", "irra-cpu", "--set", "optim.lr=1e-4", "--set", "data.img_aug=true",
                               "--lr_factor", "3"])
    assert cfg.name == "irra-cpu" and cfg.optim.lr == 1e-4 and cfg.data.img_aug is True
    assert cfg.optim.lr_factor == 3.0
    path = tmp_path / "mine.yaml"
    path.write_text("base: php-cpu\nname: mine\nmodel: {cnum: 4}\n")
    cfg, _ = config_from_argv(["--config", str(path), "--smoke"])
    assert cfg.name == "mine" and cfg.model.arch == "php" and cfg.model.cnum == load_config(
        "php-cpu", smoke=True).model.cnum  # --smoke shrinks after the file
    cfg, _ = config_from_argv(["--config", str(path)])
    assert cfg.model.cnum == 4
    with pytest.raises(ConfigError, match="--preset and --config"):
        config_from_argv(["--preset", "php", "--config", str(path)])


def test_milestones_and_img_size_take_lists():
    cfg, _ = config_from_argv(["--milestones", "10", "30", "--img_size", "256", "96", "--val_dataset", "test"])
    assert cfg.optim.milestones == (10, 30) and cfg.data.img_size == (256, 96)
    assert cfg.data.val_split == "test"  # IRRA's --val_dataset test: selection on the test split


def test_output_dir_names_the_run_folder(tmp_path):
    from irra_core.train import _run_dir

    cfg, args = config_from_argv(["--preset", "irra-cpu", "--output_dir", str(tmp_path), "--name", "exp"])
    run_dir, resume = _run_dir(cfg, args)
    assert run_dir.parent == tmp_path and run_dir.name.endswith("_exp_s1") and resume is False
    cfg, args = config_from_argv(["--resume", "--resume_ckpt_file", str(tmp_path / "r" / "checkpoints" / "last.pt")])
    assert _run_dir(cfg, args) == ((tmp_path / "r").resolve(), True)
    cfg, args = config_from_argv(["--resume"])
    with pytest.raises(ConfigError, match="--run_dir"):
        _run_dir(cfg, args)


@pytest.mark.slow
def test_train_then_test_from_the_run_config(tmp_path, capsys):
    from irra_core import test as test_cli
    from irra_core.train import main

    run = tmp_path / "run"
    argv = ["--preset", "php-cpu", "--smoke", "--run_dir", str(run), "--root_dir", str(tmp_path / "data"),
            "--set", "train.progress=none", "--set", "data.synthetic_identities=10", "--set", "train.max_steps=2"]
    assert main(argv) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert test_cli.main(["--config_file", str(run / "config.yaml")]) == 0
    again = json.loads((run / "eval" / "test_best" / "metrics.json").read_text())
    # IRRA's test.py on the selected (best) checkpoint reproduces the run's reported test metrics
    assert again["t2i"] == pytest.approx(metrics["best"]["test"]["t2i"])
    out = capsys.readouterr().out
    assert "t2i" in out and "R1" in out
    assert test_cli.main(["--config_file", str(tmp_path / "missing.yaml")]) == 2


@pytest.mark.parity
def test_test_cli_evaluates_an_irra_reference_run(tmp_path, reference_dir, capsys):
    # IRRA's tiny reference run (configs.yaml + best.pth) on a synthetic set in CUHK-PEDES layout
    from irra_core import test as test_cli
    from irra_core.data import prepare_dataset
    from irra_core.data.synthetic import synthetic_dir

    cfg = load_config("irra-cpu", {"data.root": str(tmp_path / "data"), "data.synthetic_identities": 10},
                      smoke=True)
    prepare_dataset(cfg)
    d = cfg.data
    root = synthetic_dir(d.root, d.synthetic_format, d.synthetic_identities, d.synthetic_images_per_id,
                         d.synthetic_seed)
    out = tmp_path / "eval"
    code = test_cli.main(["--config_file", str(reference_dir / "irra_tiny" / "configs.yaml"), "--root_dir",
                          str(root), "--out_dir", str(out), "--device", "cpu", "--num_workers", "0"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["t2i"]["R1"] <= 100 and (out / "queries.csv").exists()
    assert "i2t" in capsys.readouterr().out
