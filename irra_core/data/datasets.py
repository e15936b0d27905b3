"""Torch datasets: training pairs (with optional MLM inputs), gallery images and query captions.

Captions are tokenised once when a dataset is built. Images are read with a clear error naming the
file (IRRA's ``read_image`` retries forever); unreadable files are skipped only on request
(:func:`find_unreadable` + ``cfg.data.skip_bad_images``), and what was skipped is reported.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import Dataset

from irra_core.data.images import find_unreadable, read_image  # noqa: F401 - re-exported
from irra_core.data.mlm import mask_tokens
from irra_core.data.tokenizer import tokenize

def _split_index(item: Any) -> tuple[int, int]:
    # samplers yield (index, epoch); plain ints come from default samplers and direct indexing
    if isinstance(item, (tuple, list)):
        return int(item[0]), int(item[1])
    return int(item), 0


class TrainDataset(Dataset):
    """IRRA's ``ImageTextDataset`` / ``ImageTextMLMDataset``.

    Items are dicts: ``pids``, ``image_ids`` (ints), ``images`` FloatTensor (3, H, W),
    ``caption_ids`` LongTensor (L,), plus ``mlm_ids``, ``mlm_labels`` (L,) when ``mlm``.
    MLM masks are drawn from ``numpy.random.default_rng([seed, epoch, index])``: the same for any
    number of workers. ``mlm_shared_caption_bug`` returns the masked ids as ``caption_ids`` (IRRA).

    When the resized images fit in ``cache_bytes`` (small sets such as the synthetic default at
    128 x 48), each image is decoded and resized once, up front (workers inherit the cache); the
    rest of the transform runs per item, so outputs are identical to the uncached path.
    """

    def __init__(self, samples: Sequence[tuple[int, int, str, str]], transform: Callable, text_length: int = 77,
                 mlm: bool = False, mlm_shared_caption_bug: bool = False, seed: int = 0,
                 cache_bytes: int = 512 * 2**20) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.mlm, self.mlm_bug, self.seed = mlm, mlm_shared_caption_bug, int(seed)
        self.pids = [s[0] for s in self.samples]
        self.caption_ids = tokenize([s[3] for s in self.samples], text_length)  # (N, L), once
        self.skipped: dict[str, str] = {}
        self._cache: dict[str, np.ndarray] | None = None
        self._after_resize: Callable | None = None
        paths = list(dict.fromkeys(s[2] for s in self.samples))
        if (isinstance(transform, T.Compose) and transform.transforms and isinstance(transform.transforms[0], T.Resize)
                and cache_bytes > 0):
            h, w = transform.transforms[0].size
            if len(paths) * h * w * 3 <= cache_bytes:
                resize = transform.transforms[0]
                self._cache = {p: np.asarray(resize(read_image(p))) for p in paths}
                self._after_resize = T.Compose(transform.transforms[1:])

    def _image(self, path: str) -> torch.Tensor:
        if self._cache is not None:
            return self._after_resize(Image.fromarray(self._cache[path]))
        return self.transform(read_image(path))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: Any) -> dict[str, Any]:
        index, epoch = _split_index(item)
        pid, image_id, path, _ = self.samples[index]
        caption = self.caption_ids[index]
        out = {"pids": pid, "image_ids": image_id, "images": self._image(path),
               "caption_ids": caption}
        if self.mlm:
            rng = np.random.default_rng([self.seed, epoch, index])
            mlm_ids, mlm_labels = mask_tokens(caption, rng)
            out["mlm_ids"], out["mlm_labels"] = mlm_ids, mlm_labels
            if self.mlm_bug:
                out["caption_ids"] = mlm_ids  # IRRA#13: the caption tensor is masked in place
        return out


class ImageDataset(Dataset):
    """Gallery images: items ``(pid, image (3, H, W))`` in ``order`` (annotation order by default)."""

    def __init__(self, pids: Sequence[int], img_paths: Sequence[str], transform: Callable,
                 order: np.ndarray | None = None) -> None:
        self.pids, self.img_paths, self.transform = list(pids), list(img_paths), transform
        self.order = np.arange(len(self.pids)) if order is None else np.asarray(order)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        j = int(self.order[i])
        return self.pids[j], self.transform(read_image(self.img_paths[j]))


class TextDataset(Dataset):
    """Query captions: items ``(pid, caption_ids (L,))`` in ``order``; tokenised once."""

    def __init__(self, pids: Sequence[int], captions: Sequence[str], text_length: int = 77,
                 order: np.ndarray | None = None) -> None:
        self.pids, self.captions = list(pids), list(captions)
        self.caption_ids = tokenize(self.captions, text_length)
        self.order = np.arange(len(self.pids)) if order is None else np.asarray(order)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        j = int(self.order[i])
        return self.pids[j], self.caption_ids[j]
