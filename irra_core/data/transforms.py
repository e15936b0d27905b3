"""IRRA's image transforms (SPEC §1.5) at any size, with the random-erasing fill made explicit.

IRRA erases *after* ``Normalize`` with ``value=mean``, so the patch holds the raw numbers
0.48/0.46/0.41 in normalised space (about +1.7 sigma, a light grey), not the mean colour.
``erasing_fill="mean"`` (default) fills with the mean colour, i.e. 0 after normalisation;
``erasing_fill="irra_normalised_raw"`` reproduces IRRA.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torchvision.transforms as T

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ERASING_FILLS = ("mean", "irra_normalised_raw")


def build_transforms(img_size: Sequence[int] = (384, 128), is_train: bool = True, img_aug: bool = False,
                     erasing_fill: str = "mean") -> Callable:
    """IRRA's train or test transform for PIL RGB images.

    Args:
        img_size: (H, W) of the output.
        is_train: test = Resize -> ToTensor -> Normalize; train adds a horizontal flip, and with
            ``img_aug`` also Pad(10) + RandomCrop and RandomErasing(p=0.5, scale=(0.02, 0.4)).
        img_aug: IRRA's ``--img_aug``.
        erasing_fill: ``"mean"`` (correct: the mean colour, 0 after Normalize) or
            ``"irra_normalised_raw"`` (IRRA: the raw mean values written into normalised space).

    Returns:
        A callable PIL.Image -> FloatTensor (3, H, W). Resizing goes through PIL bilinear
        (antialiased), so the test transform equals IRRA's bit for bit.
    """
    if erasing_fill not in ERASING_FILLS:
        raise ValueError(f"erasing_fill={erasing_fill!r} is not one of {list(ERASING_FILLS)} "
                         f"(config key data.random_erasing_fill)")
    height, width = (int(v) for v in img_size)
    size = (height, width)
    resize = T.Resize(size, interpolation=T.InterpolationMode.BILINEAR)
    normalize = T.Normalize(mean=CLIP_MEAN, std=CLIP_STD)
    if not is_train:
        return T.Compose([resize, T.ToTensor(), normalize])
    if not img_aug:
        return T.Compose([resize, T.RandomHorizontalFlip(0.5), T.ToTensor(), normalize])
    fill = (0.0, 0.0, 0.0) if erasing_fill == "mean" else CLIP_MEAN
    return T.Compose([
        resize,
        T.RandomHorizontalFlip(0.5),
        T.Pad(10),
        T.RandomCrop(size),
        T.ToTensor(),
        normalize,
        T.RandomErasing(scale=(0.02, 0.4), value=list(fill)),
    ])
