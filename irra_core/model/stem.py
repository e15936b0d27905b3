"""The image tower's patch embedding: IRRA's patch grid, CLIP's patchify conv, and a convolutional stem for the
small image tower trained from scratch on a CPU (``model.conv_stem``).

A named deviation from ViT-B/16, off in the paper presets: see :func:`conv_stem`. The tower keeps CLIP's layout
(:class:`irra_core.model.clip.VisionTransformer`); with the stem, ``visual.stem.*`` holds the conv blocks and
``visual.conv1`` is a 1x1 projection to the tower's width.
"""
from __future__ import annotations

from torch import nn

__all__ = ["patch_grid", "patch_embedding", "conv_stem", "stem_patch_size"]


def patch_grid(image_size: tuple[int, int], patch_size: int, stride_size: int) -> tuple[int, int]:
    """(rows, cols) of patches IRRA gets from an (H, W) image: ((H - p) // s + 1, (W - p) // s + 1)."""
    h, w = image_size
    if h < patch_size or w < patch_size:
        raise ValueError(f"image size {(h, w)} is smaller than the patch size {patch_size}")
    return (h - patch_size) // stride_size + 1, (w - patch_size) // stride_size + 1


def conv_stem(patch_size: int, stride_size: int, width: int) -> nn.Sequential:
    """A convolutional stem (Xiao et al. 2021, "Early Convolutions Help Transformers See Better"): 3x3
    stride-2 conv + BatchNorm + ReLU blocks, channels doubling up to ``width // 2``, until the image is
    ``patch_size`` times smaller; ``conv1`` (1x1, to ``width``) follows it. Images (B, 3, H, W) ->
    (B, width // 2, H / p, W / p) with padding 1, so the grid is ``ceil(H / p) x ceil(W / p)``, the
    patch grid's for sizes divisible by ``p``.

    A deviation from ViT-B/16 for from-scratch training on a CPU (``model.conv_stem``; off in the paper
    presets): the 16x16 patchify conv learns slowly without pretraining.

    Raises:
        ValueError: ``stride_size != patch_size`` or ``patch_size`` not a power of two.
    """
    if stride_size != patch_size or patch_size < 2 or patch_size & (patch_size - 1):
        raise ValueError(f"model.conv_stem needs stride_size == patch_size and a power-of-two patch size, got "
                         f"patch_size={patch_size}, stride_size={stride_size}")
    stages = patch_size.bit_length() - 1
    channels = [3] + [max(8, (width // 2) >> (stages - 1 - i)) for i in range(stages)]
    blocks: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        blocks += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*blocks)


def patch_embedding(patch_size: int, stride_size: int, width: int, *, stem: bool = False
                    ) -> tuple[nn.Module, nn.Conv2d]:
    """``(stem, conv1)`` of the image tower: CLIP's patchify conv (kernel ``patch_size``, IRRA's ``stride_size``)
    after an ``nn.Identity`` stem (no parameters, so CLIP/IRRA/PHP state dicts are unchanged), or with
    ``stem`` the blocks of :func:`conv_stem` and a 1x1 ``conv1`` to ``width``.

    Raises:
        ValueError: see :func:`conv_stem`.
    """
    if not stem:
        return nn.Identity(), nn.Conv2d(3, width, kernel_size=patch_size, stride=stride_size, bias=False)
    blocks = conv_stem(patch_size, stride_size, width)
    return blocks, nn.Conv2d(blocks[-3].out_channels, width, kernel_size=1, bias=False)


def stem_patch_size(state_dict_keys) -> int | None:
    """The patch size (2 ** number of stride-2 convs) of a stem found in a CLIP state dict's keys
    (``visual.stem.<i>.weight`` of its conv layers), or None when the tower has no stem."""
    convs = {int(k.split(".")[2]) for k in state_dict_keys
             if k.startswith("visual.stem.") and k.endswith(".weight") and int(k.split(".")[2]) % 3 == 0}
    return 2 ** len(convs) if convs else None
