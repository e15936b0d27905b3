"""Pretrained CLIP weights: TorchScript archives and state dicts, SHA-256 checks, cache, offline errors.

Nothing is downloaded: the tests create every file they load (a "download" goes through a file:// URL).
"""
from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from irra_core.config import load_config
from irra_core.model import build_model
from irra_core.model import pretrained as P
from irra_core.model.clip import CLIP, CLIPConfig
from test_model_presets import single_thread  # noqa: F401  (module-scoped, autouse)

# torch.jit is deprecated, but OpenAI's published archives are TorchScript: the tests must write one
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")

CONFIG = CLIPConfig(embed_dim=32, image_resolution=(32, 32), vision_layers=2, vision_width=64, vision_patch_size=8,
                    stride_size=8, context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                    transformer_layers=1, vision_heads=1)


class _Holder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _torchscript_archive(state: dict, path) -> None:
    """Save ``state`` as a TorchScript archive whose state_dict has the same keys (OpenAI's file format)."""
    root = _Holder()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, _Holder())
            node = getattr(node, part)
        node.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
    torch.jit.save(torch.jit.script(root), str(path))


@pytest.fixture()
def clip_state():
    torch.manual_seed(0)
    state = CLIP(CONFIG).state_dict()
    state = {k: v.half() if v.dim() >= 2 and "embedding" not in k else v for k, v in state.items()}  # OpenAI's fp16
    state["logit_scale"] = torch.tensor(4.6052)  # present in OpenAI archives, unused by IRRA
    return state


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IRRA_CLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("IRRA_DATA_ROOT", str(tmp_path / "data"))
    return tmp_path / "cache"


def _register(monkeypatch, path, sha=None) -> str:
    entry = P.PretrainedEntry(path.resolve().as_uri(), sha or P.sha256_of(path))
    monkeypatch.setitem(P.OPENAI_MODELS, "Test-ViT/8", entry)
    return "Test-ViT/8"


def test_torchscript_archive_loads_and_builds_model_with_inferred_sizes(tmp_path, clip_state):
    archive = tmp_path / "tiny.pt"
    _torchscript_archive(clip_state, archive)
    state = P.load_clip_state_dict(archive)
    assert "logit_scale" not in state and set(state) == set(clip_state) - {"logit_scale"}
    cfg = load_config("irra-cpu", {"model.pretrained": str(archive), "model.conv_stem": False,
                                   "model.text_conv": 0, "data.img_size": [48, 32],
                                   "model.stride_size": 8})
    model = build_model(cfg, num_classes=5)
    clip = model.base_model
    assert clip.config.vision_width == 64 and clip.config.vision_layers == 2 and clip.config.embed_dim == 32
    assert clip.visual.grid == (6, 4)  # from cfg's image size, positional embedding resized from 4 x 4
    torch.testing.assert_close(clip.transformer.resblocks[0].attn.in_proj_weight.detach(),
                               clip_state["transformer.resblocks.0.attn.in_proj_weight"].float())


def test_plain_state_dict_file(tmp_path, clip_state):
    path = tmp_path / "state.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in clip_state.items()}}, path)
    assert set(P.load_clip_state_dict(path)) == set(clip_state) - {"logit_scale"}


def test_file_needing_arbitrary_unpickling_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"weights": _Opaque()}, path)
    with pytest.raises(P.PretrainedError, match="arbitrary unpickling"):
        P.load_clip_state_dict(path)


class _Opaque:
    pass


def test_named_model_is_downloaded_into_the_cache_and_verified(tmp_path, cache, clip_state, monkeypatch):
    source = tmp_path / "published.pt"
    _torchscript_archive(clip_state, source)
    name = _register(monkeypatch, source)
    state = P.load_clip_state_dict(name)
    assert (cache / "published.pt").is_file() and set(state) == set(clip_state) - {"logit_scale"}
    source.unlink()  # the second call uses the cached copy
    assert set(P.load_clip_state_dict(name)) == set(state)


def test_sha256_mismatch_is_an_error(tmp_path, cache, monkeypatch):
    cache.mkdir(parents=True)
    (cache / "published.pt").write_bytes(b"not the published file")
    source = tmp_path / "published.pt"
    source.write_bytes(b"published bytes")
    name = _register(monkeypatch, source, sha=hashlib.sha256(b"published bytes").hexdigest())
    with pytest.raises(P.PretrainedError, match="SHA-256 .* does not match"):
        P.load_clip_state_dict(name)
    (cache / "published.pt").unlink()
    monkeypatch.setitem(P.OPENAI_MODELS, name, P.PretrainedEntry(source.resolve().as_uri(), "0" * 64))
    with pytest.raises(P.PretrainedError, match="does not match"):
        P.load_clip_state_dict(name)  # a corrupt download is verified and removed
    assert not (cache / "published.pt").exists()


def test_offline_error_names_the_file_the_url_and_where_to_put_it(cache, monkeypatch):
    monkeypatch.setenv("IRRA_OFFLINE", "1")
    with pytest.raises(P.PretrainedError) as info:
        P.load_clip_state_dict("ViT-B/16")
    message = str(info.value)
    assert "ViT-B-16.pt" in message and P.OPENAI_MODELS["ViT-B/16"].url in message
    assert str(cache / "ViT-B-16.pt") in message and "IRRA_CLIP_CACHE" in message


def test_failed_download_says_where_to_put_the_file(tmp_path, cache, monkeypatch):
    name = _register(monkeypatch, tmp_path / "missing.pt", sha="0" * 64)
    with pytest.raises(P.PretrainedError, match="cannot download missing.pt") as info:
        P.load_clip_state_dict(name)
    assert str(cache / "missing.pt") in str(info.value)


def test_unknown_name_and_bad_weights(tmp_path, clip_state):
    with pytest.raises(P.PretrainedError, match="neither an OpenAI model name"):
        P.load_clip_state_dict("ViT-Z/99")
    broken = dict(clip_state)
    broken.pop("ln_final.bias")
    broken["visual.extra"] = torch.zeros(2)
    torch.save(broken, tmp_path / "broken.pt")
    cfg = load_config("irra-cpu", {"model.pretrained": str(tmp_path / "broken.pt"), "model.conv_stem": False,
                                   "model.text_conv": 0, "data.img_size": [32, 32]})
    with pytest.raises(ValueError, match=r"(?s)missing keys.*ln_final\.bias.*unexpected keys.*visual\.extra"):
        build_model(cfg, num_classes=3)
