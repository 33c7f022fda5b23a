"""Process-group setup from the launcher's environment and the collectives every task uses.

Works under plain `python` (world size 1, no process group), `torchrun`, and
`python -m torch.distributed.launch --use_env` (all set RANK / WORLD_SIZE / LOCAL_RANK).
Every collective is a no-op without an initialised process group, so single-process runs need no
launcher (the published scripts called barriers unconditionally and failed without one).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from engine import heartbeat


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


def init_distributed(device: str = "auto", backend: str = "auto", timeout_s: float = 1800,
                     stall_timeout_s: float = 0) -> DistInfo:
    """Initialise torch.distributed from the environment (if launched) and pick this rank's device; start the
    rank's heartbeat thread (engine.heartbeat) in multi-process runs and in any worker started by torchrun.

    `device`: `auto` (CUDA if available, else CPU), `cpu` or `cuda`. `backend`: `auto` (NCCL with CUDA,
    gloo on CPU), `nccl` or `gloo`. `timeout_s`: how long a collective waits for the other ranks
    (runtime.dist_timeout_s). `stall_timeout_s` > 0: stop when another rank's heartbeat has not moved for that
    long (runtime.stall_timeout_s).
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
                timeout=datetime.timedelta(seconds=timeout_s),
                **kwargs,
            )
    under_torchrun = bool(os.environ.get("TORCHELASTIC_RUN_ID"))
    current = heartbeat.current()
    if (world_size > 1 or under_torchrun) and (current is None or current.rank != rank):
        store = default_store() if world_size > 1 else None
        heartbeat.start(rank, world_size, store, watch_parent=under_torchrun, stall_after=stall_timeout_s)
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
    """Destroy the process group at the end of a run (no-op without one); stop the heartbeat."""
    heartbeat.stop()
    if is_dist():
        dist.destroy_process_group()


def default_store() -> object | None:
    """The default process group's key-value store (None when there is none)."""
    try:
        return dist.distributed_c10d._get_default_store()
    except (RuntimeError, ValueError, AttributeError):
        return None


def max_over_ranks(values: Sequence[float], device: torch.device) -> list[float]:
    """The element-wise maximum of `values` over every rank: one small all-reduce, so every rank takes the same
    decision (the values unchanged without a process group)."""
    if not is_dist():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


_COLLECTIVE_HINTS = ("gloo", "nccl", "connection closed by peer", "connection reset by peer", "broken pipe")


def is_collective_failure(exc: BaseException) -> bool:
    """A failed or timed-out collective of an initialised process group (gloo raises plain RuntimeErrors)."""
    if not is_dist():
        return False
    if isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and any(h in str(exc).lower() for h in _COLLECTIVE_HINTS)


def lost_ranks(exc: BaseException) -> str:
    """What a failed collective says about the other ranks, from their heartbeats in the store: 'lost rank 1
    (last heartbeat at step 7): it stopped heartbeating and the collective failed (<reason>)', or why the
    silent ranks are unknown."""
    reason = " ".join(str(exc).split()).split("] ", 1)[-1]  # gloo prefixes its source location
    reason = reason.split(". ")[0][:160]
    beat = heartbeat.current()
    found = beat.silent_ranks() if beat is not None and beat.store is not None else None
    if found is None:
        return f"a collective failed ({reason}) and the rendezvous store does not answer (its host, rank 0 or the " \
               "launcher, is gone)"
    silent, last = found
    if not silent:
        return f"a collective failed ({reason}) while every rank was still alive (heartbeating)"
    named = ", ".join(f"rank {r} (last heartbeat at step {last[r][0]})" if r in last else f"rank {r} (no heartbeat)"
                      for r in silent)
    return f"lost {named}: {'it' if len(silent) == 1 else 'they'} stopped heartbeating and the collective " \
           f"failed ({reason})"


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
