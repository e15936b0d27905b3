"""OpenAI CLIP weights: a registry of published ViT checkpoints, SHA-256-checked cached download, local files.

``load_clip_state_dict("ViT-B/16")`` looks for ``ViT-B-16.pt`` in the cache folder (``$IRRA_CLIP_CACHE``,
else ``<$IRRA_CACHE or ~/.cache/irra_workbook>/clip``) and in ``<data root>/pretrained/``, verifies its
SHA-256 (the hex folder name of OpenAI's URL), and otherwise downloads it atomically into the cache.
``IRRA_OFFLINE=1`` forbids the download; offline, the error names the file, its URL and where to put it.
A path instead of a name loads that file: an OpenAI TorchScript archive, a plain state dict (read with
``weights_only=True``), or an IRRA/PHP checkpoint whose backbone (``base_model.*``) is taken (``model.init_from``
keeps its heads too). Only ViT models are supported (the towers here are ViTs).
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from irra_core.errors import UserError
from irra_core.io_utils import atomic_write
from irra_core.paths import cache_dir, data_root

__all__ = ["OPENAI_MODELS", "PretrainedError", "available_models", "clip_cache_dir", "resolve_pretrained",
           "load_clip_state_dict", "load_clip_weights", "load_pretrained_clip", "sha256_of"]


@dataclass(frozen=True)
class PretrainedEntry:
    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _openai(sha: str, filename: str) -> PretrainedEntry:
    return PretrainedEntry(f"https://openaipublic.azureedge.net/clip/models/{sha}/{filename}", sha)


#: OpenAI's published ViT checkpoints (name -> URL, SHA-256 of the file = the URL's folder name)
OPENAI_MODELS: dict[str, PretrainedEntry] = {
    "ViT-B/16": _openai("5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt"),
    "ViT-B/32": _openai("40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt"),
    "ViT-L/14": _openai("b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"),
    "ViT-L/14@336px": _openai("3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
                              "ViT-L-14-336px.pt"),
}
#: keys of OpenAI archives that are not tower weights (CLIP's own logit scale is unused by IRRA)
_NON_TOWER_KEYS = ("input_resolution", "context_length", "vocab_size", "logit_scale")


class PretrainedError(UserError, RuntimeError):
    """Pretrained weights cannot be found, fetched or verified; the message says what to do."""


def available_models() -> list[str]:
    return list(OPENAI_MODELS)


def clip_cache_dir() -> Path:
    """Where downloaded CLIP weights live: ``$IRRA_CLIP_CACHE`` or ``<cache>/clip``."""
    return Path(os.environ.get("IRRA_CLIP_CACHE", cache_dir() / "clip")).resolve()


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(path: Path, entry: PretrainedEntry) -> Path:
    actual = sha256_of(path)
    if actual != entry.sha256:
        raise PretrainedError(f"{path}: SHA-256 {actual} does not match the published {entry.sha256} of "
                              f"{entry.filename}; the file is corrupt or a different model. Delete it and fetch "
                              f"{entry.url} again.")
    return path


def resolve_pretrained(name: str) -> Path:
    """Path of a verified local copy of OpenAI model ``name``, downloading it into the cache if needed."""
    entry = OPENAI_MODELS[name]
    cache = clip_cache_dir()
    for candidate in (cache / entry.filename, data_root() / "pretrained" / entry.filename):
        if candidate.is_file():
            return _verified(candidate, entry)
    target = cache / entry.filename
    how_to = (f"Download {entry.url} (SHA-256 {entry.sha256}) and put it at {target} (or set IRRA_CLIP_CACHE to "
              f"its folder, or place it in {data_root() / 'pretrained'}), or set model.pretrained to the file's path.")
    if os.environ.get("IRRA_OFFLINE", "") not in ("", "0"):
        raise PretrainedError(f"{entry.filename} for {name!r} is not cached and IRRA_OFFLINE is set. {how_to}")
    try:
        with urllib.request.urlopen(entry.url, timeout=60) as response:
            atomic_write(target, lambda handle: _copy(response, handle), binary=True)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise PretrainedError(f"cannot download {entry.filename} for {name!r} ({exc}). {how_to}") from exc
    try:
        return _verified(target, entry)
    except PretrainedError:
        target.unlink(missing_ok=True)
        raise


def _copy(source, handle) -> None:
    for chunk in iter(lambda: source.read(1 << 20), b""):
        handle.write(chunk)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A TorchScript archive (OpenAI's format) or a plain state dict (``weights_only=True``)."""
    import pickle
    import zipfile

    is_torchscript = False
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            is_torchscript = any(n.split("/", 1)[-1].startswith("code/") for n in archive.namelist())
    if is_torchscript:
        import warnings

        with warnings.catch_warnings():  # torch.jit is deprecated, but OpenAI's archives are TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise PretrainedError(f"{path}: refused - it needs arbitrary unpickling (weights_only=True failed: "
                                  f"{str(exc).strip().splitlines()[0]}); re-save its state dict.") from exc
        for wrapper in ("state_dict", "model"):  # {"state_dict": sd}; IRRA/PHP checkpoints: {"model": sd}
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict):
        raise PretrainedError(f"{path}: expected a TorchScript archive or a state dict, got {type(state).__name__}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_clip_state_dict(name_or_path: str | Path) -> dict[str, torch.Tensor]:
    """CLIP tower weights (OpenAI key layout) from an OpenAI model name or a file path.

    Raises:
        PretrainedError: unknown name, missing file, failed download or SHA-256 mismatch.
    """
    text = str(name_or_path)
    if text in OPENAI_MODELS:
        path = resolve_pretrained(text)
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise PretrainedError(f"pretrained weights {text!r}: neither an OpenAI model name "
                                  f"({available_models()}) nor an existing file")
    state = _read_weights(path)
    if "visual.conv1.weight" not in state:  # an IRRA/PHP checkpoint: its backbone (use model.init_from for heads)
        state = {k[len("base_model."):]: v for k, v in state.items() if k.startswith("base_model.")} or state
    return {k: v for k, v in state.items() if k not in _NON_TOWER_KEYS}


def load_pretrained_clip(name_or_path: str | Path, image_resolution: tuple[int, int] = (384, 128),
                         stride_size: int = 16):
    """A :class:`irra_core.model.clip.CLIP` with pretrained weights at IRRA's input size (positional
    embedding interpolated to the patch grid), sizes inferred from the weights."""
    from irra_core.model.clip import CLIP
    from irra_core.model.clip_state import clip_config_from_state_dict

    state = load_clip_state_dict(name_or_path)
    model = CLIP(clip_config_from_state_dict(state, image_resolution=image_resolution, stride_size=stride_size))
    load_clip_weights(model, state, source=str(name_or_path))
    return model


def load_clip_weights(clip: nn.Module, state: dict, *, source: str) -> None:
    """Load a CLIP state dict into ``clip``: resize the image positional embedding, then a strict load.

    Raises:
        ValueError: keys missing, unexpected or of the wrong shape (every one is listed).
    """
    from irra_core.model.clip_state import interpolate_positional_embedding
    from irra_core.model.clip_state import check_state_dict

    state = dict(state)
    grid = clip.visual.grid
    state["visual.positional_embedding"] = interpolate_positional_embedding(state["visual.positional_embedding"], grid)
    check_state_dict(clip, state, source=source)
    clip.load_state_dict(state, strict=True)
