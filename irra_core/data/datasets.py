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
from torch.utils.data import Dataset

from irra_core.data.images import find_unreadable, read_image  # noqa: F401 - re-exported
from irra_core.data.mlm import mask_tokens
from irra_core.data.tokenizer import tokenize

def _split_index(item: Any) -> tuple[int, int]:
    # samplers yield (index, epoch); plain ints come from default samplers and direct indexing
    if isinstance(item, (tuple, list)):
        return int(item[0]), int(item[1])
    return int(item), 0


_TENSOR_SAFE = (T.RandomHorizontalFlip, T.Pad, T.RandomCrop, T.Normalize, T.RandomErasing)


def _tensor_steps(transform: Callable) -> Callable | None:
    """The steps after ``Resize`` of a ``Compose([Resize, ..., ToTensor, ...])`` as a tensor pipeline on
    [0, 1] float images, or None when a step has no identical tensor counterpart."""
    if not (isinstance(transform, T.Compose) and transform.transforms
            and isinstance(transform.transforms[0], T.Resize)):
        return None
    rest = transform.transforms[1:]
    if sum(isinstance(t, T.ToTensor) for t in rest) != 1:
        return None
    steps = [t for t in rest if not isinstance(t, T.ToTensor)]
    if not all(isinstance(t, _TENSOR_SAFE) for t in steps):
        return None
    if any(isinstance(t, T.Pad) and (t.padding_mode != "constant" or t.fill != 0) for t in steps):
        return None  # PIL pads uint8 with the fill value; only 0 means the same in [0, 1] floats
    if any(isinstance(t, T.RandomCrop) and (t.padding is not None or t.pad_if_needed) for t in steps):
        return None
    return T.Compose(steps)


class TrainDataset(Dataset):
    """IRRA's ``ImageTextDataset`` / ``ImageTextMLMDataset``.

    Items are dicts: ``pids``, ``image_ids`` (ints), ``images`` FloatTensor (3, H, W),
    ``caption_ids`` LongTensor (L,), plus ``mlm_ids``, ``mlm_labels`` (L,) when ``mlm``.
    MLM masks are drawn from ``numpy.random.default_rng([seed, epoch, index])``: the same for any
    number of workers. ``mlm_shared_caption_bug`` returns the masked ids as ``caption_ids`` (IRRA).

    When the resized images fit in ``cache_bytes`` (small sets such as the synthetic default at
    128 x 48), each image is decoded and resized once, up front, into one in-memory uint8 tensor
    (N, 3, h, w) (workers inherit it); the rest of the transform (flip, pad, crop, normalise, erase) then
    runs on tensors, with no PIL per item. The tensor ops draw the same random numbers as their PIL
    counterparts, so for the same torch seed the items equal the file path's (``cache_bytes=0``).
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
        self._rows: dict[str, int] | None = None
        self._pixels: torch.Tensor | None = None  # (N, 3, h, w) uint8, resized once
        self._after_resize: Callable | None = None
        paths = list(dict.fromkeys(s[2] for s in self.samples))
        after = _tensor_steps(transform)
        if after is not None and cache_bytes > 0:
            resize = transform.transforms[0]
            h, w = resize.size
            if len(paths) * h * w * 3 <= cache_bytes:
                self._rows = {p: i for i, p in enumerate(paths)}
                self._pixels = torch.empty((len(paths), 3, h, w), dtype=torch.uint8)
                for i, p in enumerate(paths):
                    self._pixels[i] = torch.from_numpy(np.array(resize(read_image(p)))).permute(2, 0, 1)
                self._after_resize = after

    @property
    def in_memory(self) -> bool:
        """True when the images are held as one pre-decoded uint8 tensor."""
        return self._pixels is not None

    def _image(self, path: str) -> torch.Tensor:
        if self._pixels is not None:
            return self._after_resize(self._pixels[self._rows[path]].float().div_(255.0))
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
