"""The towers' input stems: IRRA's patch grid, CLIP's patchify conv, a convolutional stem for the small image
tower trained from scratch on a CPU (``model.conv_stem``), and a causal token convolution for the small text tower
(``model.text_conv``).

Both stems are named deviations from CLIP, off in the paper presets: see :func:`conv_stem` and
:class:`CausalTokenConv`. The towers keep CLIP's layout (:class:`irra_core.model.clip.CLIP`); with the image stem,
``visual.stem.*`` holds the conv blocks and ``visual.conv1`` is a 1x1 projection to the tower's width; with the
token convolution, ``text_conv.conv.{weight,bias}`` are the only new weights.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["patch_grid", "patch_embedding", "conv_stem", "stem_patch_size", "CausalTokenConv", "text_conv_size"]


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


class CausalTokenConv(nn.Module):
    """A causal 1-D convolution over the text tower's token embeddings, added as a residual:
    ``x_t + b + sum_{j < k} W_j x_{t-j}`` for each position ``t`` (earlier positions only; zero padding before the
    first token).

    A deviation from CLIP's text tower for from-scratch training on a CPU (``model.text_conv``, the kernel width
    ``k`` in tokens; 0 = off, as in the paper presets). A caption names a garment by a colour word just before
    its noun ("a red coat"); with the convolution the noun's position carries that word from the first step,
    where CLIP's tower has to learn a previous-token attention head from learned absolute positions first
    (``benchmarks/README.md``, "Sixth pass": +4.5 to +9.6 test t2i R1 for ``php-cpu`` over five seeds at the same
    450 steps).

    * Causal, so CLIP's causal text tower keeps its properties: position ``t`` depends on tokens ``<= t`` only,
      the EOT feature does not see the padding after it.
    * Zero-initialised weight and bias, so a freshly built tower computes exactly what it does without the
      convolution, and the optimiser grows it from there.

    Shapes: (B, L, width) -> (B, L, width), in the input's dtype.
    """

    def __init__(self, width: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"model.text_conv: a kernel of {kernel_size} tokens; use 0 (off) or a width >= 1")
        self.kernel_size = int(kernel_size)
        self.conv = nn.Conv1d(width, width, self.kernel_size)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        past = F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0))  # (B, width, k - 1 + L): only earlier tokens
        return x + self.conv(past.to(self.conv.weight.dtype)).transpose(1, 2).to(x.dtype)


def text_conv_size(state_dict) -> int:
    """The kernel width ``k`` of a :class:`CausalTokenConv` in a CLIP state dict (``text_conv.conv.weight``,
    shape (width, width, k)), or 0 when the text tower has none."""
    weight = state_dict.get("text_conv.conv.weight")
    return 0 if weight is None else int(weight.shape[-1])
