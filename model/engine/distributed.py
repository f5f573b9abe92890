"""The process group of a distributed run (``torchrun``) and the few collectives training needs.

``torchrun --nproc_per_node N [--nnodes M ...] --no-python sasreid train ...`` starts one process per
device and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them and joins the group (NCCL on CUDA devices, gloo on the CPU).
Without them the run is a single process and every collective here is the identity, so the
single-process path does exactly what it did before distributed training existed.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


class DistributedError(RuntimeError):
    """A distributed setting that cannot work; the message names it."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the run: ``rank`` of ``world_size``, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, logs and progress, and evaluates."""
        return self.rank == 0

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device: str, timeout_s: float = 1800.0) -> DistContext:
    """The context of this process for ``--device device``; joins the process group under torchrun.

    ``device`` ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per process); ``cpu`` stays the CPU
    (gloo). An explicit ``cuda:I`` is refused in a distributed run: torchrun assigns the devices.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    requested = torch.device(device)
    if world <= 1:
        return DistContext(device=requested)
    if not 0 <= rank < world:
        raise DistributedError(f"RANK={rank} is outside WORLD_SIZE={world}")
    if requested.type == "cuda":
        if requested.index is not None:
            raise DistributedError(f"--device {device}: under torchrun pass --device cuda; each process uses "
                                   "cuda:LOCAL_RANK")
        if not torch.cuda.is_available() or local >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK={local} needs a CUDA device, found {torch.cuda.device_count()}")
        requested = torch.device("cuda", local)
        torch.cuda.set_device(requested)
    ctx = DistContext(rank=rank, world_size=world, local_rank=local, device=requested)
    if not dist.is_initialized():
        dist.init_process_group(ctx.backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return ctx


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_rows(ctx: DistContext, x: torch.Tensor) -> torch.Tensor:
    """``[sum_r N_r, ...]``: every rank's rows of ``x [N_r, ...]`` in rank order (no gradient).

    Ranks may hold different row counts; rows are padded to the largest count for the collective.
    """
    if not ctx.distributed:
        return x
    count = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(ctx.world_size)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def mean_over_ranks(ctx: DistContext, values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (every rank must pass the same keys)."""
    if not ctx.distributed:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (so all ranks stop together)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(ctx: DistContext, module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics, memory proxies) on every rank, as DDP does before
    each forward; for passes that call the unwrapped model."""
    if not ctx.distributed:
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=0)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
