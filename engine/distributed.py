"""Process-group setup from the launcher's environment and the collectives every task uses.

Works under plain `python` (world size 1, no process group), `torchrun`, and
`python -m torch.distributed.launch --use_env` (all set RANK / WORLD_SIZE / LOCAL_RANK).
Every collective is a no-op without an initialised process group, so single-process runs need no
launcher (the published scripts called barriers unconditionally and failed without one).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, world size, local rank and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def init_distributed(device: str = "auto", backend: str = "auto", timeout_minutes: int = 30) -> DistInfo:
    """Initialise torch.distributed from the environment (if launched) and pick this rank's device.

    `device`: `auto` (CUDA if available, else CPU), `cpu` or `cuda`. `backend`: `auto` (NCCL with CUDA,
    gloo on CPU), `nccl` or `gloo`.
    """
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available on this machine")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    chosen_backend: str | None = None
    if world_size > 1:
        chosen_backend = ("nccl" if use_cuda else "gloo") if backend == "auto" else backend
        if not dist.is_initialized():
            kwargs = {"device_id": dev} if chosen_backend == "nccl" else {}
            dist.init_process_group(
                backend=chosen_backend,
                init_method="env://",
                rank=rank,
                world_size=world_size,
                timeout=datetime.timedelta(minutes=timeout_minutes),
                **kwargs,
            )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, backend=chosen_backend)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    """Destroy the process group at the end of a run (no-op without one)."""
    if is_dist():
        dist.destroy_process_group()


@torch.no_grad()
def all_gather_nograd(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped tensors of all ranks along dim 0, rank order, no gradient."""
    if not is_dist():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns each rank its slice of the summed gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        n = grad.shape[0] // dist.get_world_size()
        rank = dist.get_rank()
        return grad[rank * n : (rank + 1) * n]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate tensors of all ranks along dim 0 keeping the gradient path to the local slice."""
    if not is_dist():
        return tensor
    return _GatherWithGrad.apply(tensor)


def broadcast_object(obj: object, src: int = 0) -> object:
    """Send a picklable object from `src` to every rank."""
    if not is_dist():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy `src`'s buffers (e.g. BatchNorm running statistics) to every rank; no-op without a process group."""
    if not is_dist():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)
