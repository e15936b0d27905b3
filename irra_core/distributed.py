"""Multi-process training helpers (torchrun; NCCL on GPUs, gloo on CPUs).

IRRA's DDP path never worked (SPEC §1.8, §1.13): every rank saw all data and the contrastive losses only
saw the local batch. Here each rank reads its own slice of every epoch (the data layer's sampler takes
``rank`` / ``world_size``) and SDM / ITC / CMPM run over the *global* batch: :func:`gather_batch` gathers
the features of all ranks with gradients flowing back to the rank that produced them.

Gradient bookkeeping: every rank computes the same global loss L, so the gradient reaching rank r's local
features is, after the all-reduce in :class:`_GatherWithGrad`'s backward, ``world_size x dL/df_r``; DDP then
*averages* parameter gradients over ranks, which cancels the factor: the update equals the single-process
update on the concatenated batch (tests/test_ddp.py checks it).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "is_distributed", "get_rank", "get_world_size",
           "gather_with_grad", "gather_batch", "all_reduce_sum", "barrier"]


@dataclass
class DistInfo:
    """This process's place in the job: ``rank`` among ``world_size`` processes, ``local_rank`` on its host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str, *, timeout_s: float = 1800) -> DistInfo:
    """Join the process group described by torchrun's environment (``WORLD_SIZE``, ``RANK``...).

    Without ``WORLD_SIZE > 1`` nothing happens and a single-process :class:`DistInfo` is returned.
    NCCL is used for CUDA devices, gloo otherwise.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradients of every rank and returns this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        ctx.rank, ctx.size = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # gloo has no reduce_scatter; all_reduce + slice is exact
        return grad[ctx.rank * ctx.size:(ctx.rank + 1) * ctx.size]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor (b, ...)`` of every rank in rank order -> ``(world_size * b, ...)``.

    Every rank must pass the same ``b`` (the engine's loader drops the ragged last batch under DDP).
    Without a process group this returns ``tensor`` itself.
    """
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


def _gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def gather_batch(image_feats: torch.Tensor, text_feats: torch.Tensor,
                 pids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The global batch for contrastive losses (the ``gather`` of :func:`irra_core.losses.total_loss`).

    Args:
        image_feats: (b, D) this rank's image features.
        text_feats: (b, D) this rank's text features.
        pids: (b,) this rank's person ids.

    Returns:
        ``(B, D), (B, D), (B,)`` with B = world_size x b, rank 0's rows first.
    """
    if not is_distributed():
        return image_feats, text_feats, pids
    return gather_with_grad(image_feats), gather_with_grad(text_feats), _gather_no_grad(pids)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks (a copy; the input is untouched). Identity without a process group."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out
