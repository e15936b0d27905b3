"""The one checkpoint reader: every layout IRRA's and PHP's releases (and their users) produce loads for
evaluation, inspection and fine-tuning, with the reference fixtures' parity and a report of what was read.

Layouts are derived in the test from ../shared/reference/{irra,php}_tiny (real IRRA/PHP log folders): the file
alone, re-saved without the ``model`` wrapper, with DataParallel's ``module.`` prefix, in fp16, backbone only, in
OpenAI's CLIP key layout, and with a classifier of another class count.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from irra_core.config import ConfigError, load_config
from irra_core.model.load import load_model, read_checkpoint
from test_model_presets import single_thread  # noqa: F401  (module-scoped, autouse)

TOL = {"atol": 1e-4, "rtol": 1e-4}


def _state(reference_dir, name: str) -> dict:
    return torch.load(reference_dir / name / "best.pth", weights_only=True)["model"]


@pytest.fixture(scope="module")
def layouts(reference_dir, tmp_path_factory):
    """{name: path} of every layout, for IRRA (and the PHP file alone)."""
    root = tmp_path_factory.mktemp("layouts")
    irra = _state(reference_dir, "irra_tiny")
    out = {"irra-log-folder": reference_dir / "irra_tiny"}
    out["irra-file-alone"] = root / "alone.pth"
    shutil.copy(reference_dir / "irra_tiny" / "best.pth", out["irra-file-alone"])
    out["irra-no-wrapper"] = root / "plain.pth"
    torch.save(irra, out["irra-no-wrapper"])
    out["irra-module-prefix"] = root / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in irra.items()}, "epoch": 3}, out["irra-module-prefix"])
    out["irra-fp32"] = root / "fp32.pt"
    torch.save({k: v.float() for k, v in irra.items()}, out["irra-fp32"])
    # the log-folder layout with an fp16 file: configs.yaml next to it is used
    folder = root / "fp16_run"
    folder.mkdir()
    shutil.copy(reference_dir / "irra_tiny" / "configs.yaml", folder / "configs.yaml")
    torch.save({"model": {k: v.half() for k, v in irra.items()}}, folder / "best.pth")
    out["irra-log-folder-fp16"] = folder
    out["php-file-alone"] = root / "php.pth"
    shutil.copy(reference_dir / "php_tiny" / "best.pth", out["php-file-alone"])
    return out


@pytest.fixture(scope="module")
def io(reference_dir):
    return {n: torch.load(reference_dir / n / "io.pt", weights_only=True) for n in ("irra_tiny", "php_tiny")}


@pytest.mark.parametrize("layout", ["irra-log-folder", "irra-file-alone", "irra-no-wrapper", "irra-module-prefix",
                                    "irra-fp32"])
def test_every_irra_layout_loads_with_parity(layouts, io, layout):
    model = load_model(layouts[layout])
    inputs, expected = io["irra_tiny"]["inputs"], io["irra_tiny"]["expected"]
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(inputs["images"]), expected["encode_image"], **TOL)
        torch.testing.assert_close(model.encode_text(inputs["caption_ids"]), expected["encode_text"], **TOL)
    report = model.load_report
    assert len(report.loaded) == 91 and not report.initialised
    assert tuple(model.cfg.data.img_size) == (96, 32)  # read from configs.yaml, or inferred (3:1) from the grid
    assert model.classifier.out_features == io["irra_tiny"]["num_classes"]
    if layout == "irra-module-prefix":
        assert any("module." in n for n in report.notes)
    if layout in ("irra-file-alone", "irra-no-wrapper"):
        assert report.kind == "file" and any("no configuration" in n for n in report.notes)


def test_fp16_file_loads_exactly_upcast(layouts):
    model = load_model(layouts["irra-log-folder-fp16"])
    assert model.load_report.checkpoint_dtypes == ["float16"] and model.load_report.kind == "reference-run"
    saved = torch.load(layouts["irra-log-folder-fp16"] / "best.pth", weights_only=True)["model"]
    for key in ("base_model.visual.conv1.weight", "classifier.weight", "mlm_head.fc.bias"):
        assert torch.equal(model.state_dict()[key], saved[key].float())


def test_php_file_alone_keeps_the_shared_gate_and_parity(layouts, io):
    # no options: the release's switches and EFP head count (not stored in weights) are passed; sizes from weights
    model = load_model(layouts["php-file-alone"], moe_gating="shared", crfm_attend_padding=True, moe_heads=2)
    inputs, expected = io["php_tiny"]["inputs"], io["php_tiny"]["expected"]["fixed"]
    assert model.cfg.model.arch == "php" and model.cfg.model.cnum == io["php_tiny"]["php_config"]["cnum"]
    assert any("moe_heads" in n for n in model.load_report.notes)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(inputs["images"]), expected["encode_image"], **TOL)
        torch.testing.assert_close(model.encode_text(inputs["caption_ids"]), expected["encode_text"], **TOL)
    assert any(k.endswith("expert_count_accum") for k in model.load_report.dropped)


def test_backbone_only_checkpoint_evaluates_as_clip_features(reference_dir, layouts, io, tmp_path):
    irra = _state(reference_dir, "irra_tiny")
    backbone = {k: v for k, v in irra.items() if k.startswith("base_model.")}
    torch.save({"model": backbone}, tmp_path / "backbone.pth")
    full = load_model(layouts["irra-log-folder"])
    model = load_model(tmp_path / "backbone.pth")
    assert not hasattr(model, "classifier") and not hasattr(model, "cross_attn")
    assert any("no id head" in n for n in model.load_report.notes)
    images = io["irra_tiny"]["inputs"]["images"]
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), full.encode_image(images), atol=0, rtol=0)
    # with IRRA's configs.yaml next to it (loss_names sdm+mlm+id): the heads are left out with a note, no
    # "the 'id' loss needs num_classes >= 1, got 0"
    folder = tmp_path / "pretrain_release"
    folder.mkdir()
    shutil.copy(reference_dir / "irra_tiny" / "configs.yaml", folder / "configs.yaml")
    torch.save({"model": backbone}, folder / "best.pth")
    model = load_model(folder)
    assert model.cfg.loss_names() == ["sdm"] and any("no mlm / id head" in n for n in model.load_report.notes)
    # in OpenAI's CLIP key layout (no base_model. prefix)
    torch.save({k[len("base_model."):]: v for k, v in backbone.items()}, tmp_path / "clip_layout.pt")
    model = load_model(tmp_path / "clip_layout.pt")
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), full.encode_image(images), atol=0, rtol=0)


def test_backbone_only_with_a_php_config_names_file_and_fix(reference_dir, tmp_path):
    folder = tmp_path / "php_backbone"
    folder.mkdir()
    shutil.copy(reference_dir / "php_tiny" / "configs.yaml", folder / "configs.yaml")
    state = _state(reference_dir, "php_tiny")
    torch.save({"model": {k: v for k, v in state.items() if k.startswith("base_model.")}}, folder / "best.pth")
    with pytest.raises(ConfigError) as info:
        load_model(folder)
    message = str(info.value)
    assert str(folder / "best.pth") in message and "--finetune" in message and "num_classes" not in message


def test_unreadable_and_foreign_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a workbook run"):
        load_model(tmp_path / "empty")
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth"):
        load_model(tmp_path / "broken.pth")
    torch.save({"head.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no CLIP backbone"):
        load_model(tmp_path / "other.pth")


def test_inspection_loads_a_released_checkpoint_on_a_synthetic_split(layouts, tmp_path):
    from irra_core.viz.inspect import checkpoint_data, load_run, load_runs

    data = checkpoint_data("synthetic", str(tmp_path / "data"), smoke=True)
    run = load_run(layouts["irra-module-prefix"], overrides=data, work_dir=tmp_path / "work")
    assert run.img_size == (96, 32) and run.cfg.data.dataset == "synthetic"
    table = run.query_table()
    assert len(table) == len(run.split["captions"]) and (table.first_hit_rank >= 1).all()
    idx, scores = run.rank_text("a man in a red jacket", 3)
    assert len(idx) == 3 and scores == sorted(scores, reverse=True)
    runs = load_runs(tmp_path / "run", device="cpu", checkpoint_path=layouts["php-file-alone"], overrides=data)
    assert list(runs) == ["php"]
    with pytest.raises(ValueError, match="php model"):
        load_runs(tmp_path / "run", checkpoint_path=layouts["php-file-alone"], overrides=data, models=("irra",))


def test_read_checkpoint_kinds(layouts, reference_dir):
    assert read_checkpoint(layouts["irra-log-folder"]).kind == "reference-run"
    src = read_checkpoint(reference_dir / "php_tiny" / "best.pth")  # the file inside a log folder: its options
    assert src.kind == "file" and src.options["cnum"] == 3 and src.arch == "php"


# ---- fine-tuning ---------------------------------------------------------------------------------------------
def _train(argv):
    from irra_core.train import main

    return main(argv)


@pytest.mark.parametrize("layout", ["irra-log-folder", "irra-module-prefix"])
def test_finetune_from_a_released_checkpoint(layouts, reference_dir, tmp_path, layout, capsys):
    run = tmp_path / "ft"
    argv = ["--preset", "irra-cpu", "--smoke", "--finetune", str(layouts[layout]), "--run_dir", str(run),
            "--root_dir", str(tmp_path / "data"), "--set", "train.progress=none", "--set", "train.max_steps=1",
            "--set", "optim.lr=0.0", "--set", "data.img_size=[96, 32]", "--set", "data.synthetic_identities=40"]
    assert _train(argv) == 0
    report = json.loads((run / "init_report.json").read_text())
    assert report["purpose"] == "finetune"
    # another dataset's class count: the classifier starts fresh, with a note
    assert "classifier.weight" in report["initialised"] and "classifier.weight" in report["dropped"]
    assert any("classifier re-initialised" in n and "11 classes" in n for n in report["notes"])
    assert "base_model.visual.conv1.weight" in report["loaded"] and "mlm_head.fc.weight" in report["loaded"]
    # sizes from the weights, nothing downloaded; with lr 0 the trained towers are exactly the checkpoint's
    saved = load_config(run / "config.yaml")
    assert saved.model.vision_width == 64 and saved.model.pretrained == "" and saved.data.text_length == 77
    assert saved.model.text_conv == 0  # the preset's token convolution (3) is not in the released weights
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    ref = _state(reference_dir, "irra_tiny")
    for key in ("base_model.visual.conv1.weight", "base_model.token_embedding.weight", "ln_post.weight"):
        assert torch.equal(last[key], ref[key].float())
    # resuming keeps the run's own weights (resume wins over init) and does not rewrite the report
    stamp = (run / "init_report.json").stat().st_mtime_ns
    assert _train(argv[:-8] + ["--resume", "--set", "data.synthetic_identities=40", "--set", "train.progress=none", "--set", "train.max_steps=1",
                               "--set", "optim.lr=0.0", "--set", "data.img_size=[96, 32]"]) == 0
    assert (run / "init_report.json").stat().st_mtime_ns == stamp


def test_finetune_php_from_an_irra_checkpoint_starts_the_php_heads_fresh(layouts, tmp_path):
    from irra_core.model import build_model
    from irra_core.model.load import init_from_checkpoint, resolve_init_config

    cfg = load_config("php-cpu", {"model.init_from": str(layouts["irra-fp32"]), "data.img_size": [128, 48]})
    notes = resolve_init_config(cfg)
    assert cfg.model.vision_width == 64 and any("vision_width" in n for n in notes)
    model = build_model(cfg, num_classes=5)
    report = init_from_checkpoint(model, cfg.model.init_from)
    assert any(k.startswith("crfm.") for k in report.initialised)
    assert any(k.startswith("mlm_head.") for k in report.dropped)  # PHP has no MLM branch
    assert any("positional embedding resized" in n for n in report.notes)
    assert model.base_model.visual.positional_embedding.shape[0] == 1 + 8 * 3


def test_finetune_from_a_workbook_run_and_evaluate_it(tmp_path):
    from irra_core import test as test_cli

    first = tmp_path / "first"
    common = ["--smoke", "--root_dir", str(tmp_path / "data"), "--set", "train.progress=none",
              "--set", "train.max_steps=1", "--set", "data.synthetic_identities=10"]
    assert _train(["--preset", "php-cpu", "--run_dir", str(first)] + common) == 0
    second = tmp_path / "second"
    assert _train(["--preset", "php-cpu", "--run_dir", str(second), "--finetune", str(first)] + common) == 0
    report = json.loads((second / "init_report.json").read_text())
    assert report["kind"] == "workbook-run" and not report["initialised"]
    assert test_cli.main(["--checkpoint", str(second / "checkpoints" / "last.pt"), "--out_dir",
                          str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["t2i"]["R1"] >= 0


def test_finetune_from_a_backbone_only_checkpoint_starts_every_head_fresh(reference_dir, tmp_path, capsys):
    from irra_core.model import build_model
    from irra_core.model.load import init_from_checkpoint, resolve_init_config
    from irra_core.train import main

    state = _state(reference_dir, "irra_tiny")
    torch.save({"model": {k: v for k, v in state.items() if k.startswith("base_model.")}}, tmp_path / "bb.pth")
    cfg = load_config("irra-cpu", {"model.init_from": str(tmp_path / "bb.pth"), "data.img_size": [96, 32]})
    resolve_init_config(cfg)
    model = build_model(cfg, num_classes=7)
    report = init_from_checkpoint(model, tmp_path / "bb.pth")
    assert {k.split(".")[0] for k in report.initialised} == {"classifier", "cross_attn", "cross_modal_transformer",
                                                            "ln_pre_t", "ln_pre_i", "ln_post", "mlm_head"}
    assert all(k.startswith("base_model.") for k in report.loaded) and not report.dropped
    assert main(["--preset", "irra-cpu", "--finetune", str(tmp_path / "missing.pth"), "--dry_run"]) == 2
    assert "--finetune" in capsys.readouterr().err


def test_a_paper_run_loads_offline_without_asking_for_clip_weights(tmp_path, monkeypatch):
    """A workbook run trained from ViT-B/16 (config: model.pretrained) holds its towers: nothing is fetched."""
    from irra_core.checkpoint import save_checkpoint
    from irra_core.config import save_config
    from irra_core.model import build_model
    from irra_core.viz.inspect import checkpoint_data, load_run

    cfg = load_config("irra-cpu", {"data.root": str(tmp_path / "data")}, smoke=True)
    model = build_model(cfg, num_classes=5)
    paper = load_config("irra-cpu", {"data.root": str(tmp_path / "data"), "model.pretrained": "ViT-B/16"}, smoke=True)
    paper.model.pretrained = "ViT-B/16"  # what a `paper` run's config.yaml says
    run = tmp_path / "paper_run"
    (run / "checkpoints").mkdir(parents=True)
    save_config(paper, run / "config.yaml")
    save_checkpoint(run / "checkpoints" / "best.pt", model=model, optimizer=None, scheduler=None, scaler=None,
                    epoch=1, iteration=1, config=paper.to_dict())
    monkeypatch.setenv("IRRA_OFFLINE", "1")
    monkeypatch.setenv("IRRA_CLIP_CACHE", str(tmp_path / "empty_cache"))
    loaded = load_run(run, overrides=checkpoint_data("synthetic", str(tmp_path / "data"), smoke=True))
    assert any("ViT-B/16" in n and "ignored" in n for n in loaded.model.load_report.notes)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)


def test_test_command_never_writes_into_a_release_and_keeps_two_releases_apart(tmp_path):
    """``test`` writes a released folder's or a bare file's results under outputs/eval with a hash of the weights
    path (two ``best.pth`` never share a folder); a workbook run keeps its own ``eval/``."""
    from types import SimpleNamespace

    from irra_core.test import default_out_dir

    runs = tmp_path / "outputs" / "runs"
    a, b = tmp_path / "relA", tmp_path / "relB"
    for folder in (a, b):
        folder.mkdir()
    out_a = default_out_dir(a, SimpleNamespace(kind="reference-run", file=a / "best.pth"), "CUHK-PEDES", "test", runs)
    out_b = default_out_dir(b / "best.pth", SimpleNamespace(kind="file", file=b / "best.pth"), "CUHK-PEDES", "test",
                            runs)
    assert out_a.parent == out_b.parent == tmp_path / "outputs" / "eval" and out_a != out_b
    assert a not in out_a.parents and out_a.name.startswith("relA_CUHK-PEDES_test_")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ours = default_out_dir(run, SimpleNamespace(kind="workbook-run", file=run / "checkpoints" / "last.pt"),
                           "synthetic", "test", runs)
    assert ours == run / "eval" / "test_last"


def test_test_command_fails_before_evaluating_when_it_cannot_write(reference_dir, tmp_path, capsys):
    from irra_core import test as test_cli

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code = test_cli.main(["--checkpoint", str(reference_dir / "irra_tiny"), "--root_dir", str(tmp_path / "nowhere"),
                          "--out_dir", str(blocker / "results")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write the results to" in " ".join(err.split()) and "Traceback" not in err
