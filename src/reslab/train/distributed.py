"""Several processes, one model: DistributedDataParallel under ``torchrun``.

``torchrun --nproc-per-node N -m reslab train ...`` starts N copies of the command with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; the trainer
reads them here, joins the process group (gloo on the CPU, NCCL on CUDA), and each rank trains
on its own shard of every global batch (``BatchLoader(rank=, world_size=)``). DDP averages the
gradients, so every rank holds the same weights; rank 0 alone writes files and prints.

All ranks use the same torch seed: the same initial weights and, with stochastic depth, the same
per-batch drop decisions on every rank (the data randomness comes from the loader's own
generators, seeded per rank). A dropped block's parameters get no gradient in that step, which
DDP must be told (``find_unused_parameters``).
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from reslab.errors import TrainingError


@dataclass(frozen=True)
class DistributedEnv:
    """This process's place among the processes of one run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistributedEnv:
    """The process's rank and the number of processes, from torchrun's variables (1 process
    when they are absent)."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise TrainingError(f"torchrun's environment variables are not integers ({exc})") from None
    return DistributedEnv(rank, world_size, local_rank)


def pick_device(requested: str, env: DistributedEnv) -> torch.device:
    """``auto`` is CUDA when there is a GPU; each process takes the GPU of its local rank."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked but torch sees no CUDA GPU; use --device cpu or auto")
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def setup(env: DistributedEnv, device: torch.device) -> bool:
    """Join the process group if this is a multi-process run; True if we joined it here."""
    if not env.enabled or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)
    return True


def teardown(joined: bool, *, finished: bool) -> None:
    """Leave the process group. After a run that ``finished``, the processes first wait for each
    other (rank 0 is still writing its checkpoint when the others get here), and the DDP wrapper,
    which holds the group, is collected first: a gloo group torn down while its peer still
    talks, or freed at interpreter exit, aborts the process ("terminate called without an active
    exception")."""
    if not (joined and dist.is_initialized()):
        return
    if finished:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def wrap(model: nn.Module, env: DistributedEnv, device: torch.device, *, sync_bn: bool) -> nn.Module:
    """``model`` in DistributedDataParallel (a no-op for one process). Models with stochastic
    depth leave parameters unused in some steps, so DDP looks for them."""
    if not env.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel
    from reslab.models.layers import residual_blocks

    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    drops_blocks = any(block.drop_path.survival < 1 for _, block in residual_blocks(model))
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=drops_blocks)


def barrier(env: DistributedEnv) -> None:
    if env.enabled:
        dist.barrier()


def all_reduce(tensor: Tensor, env: DistributedEnv, op: str = "sum") -> Tensor:
    """Sum (or max) ``tensor`` over the processes, in place; unchanged for one process."""
    if env.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor


def average_buffers(model: nn.Module, env: DistributedEnv) -> None:
    """Average the floating-point buffers (BN running statistics) over the processes: each rank's
    statistics saw only its shard of the last batches; the mean is a better estimate and makes
    every rank evaluate the same model."""
    if not env.enabled:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(env.world_size)


def ranks_identical(model: nn.Module, env: DistributedEnv) -> bool:
    """Whether every process holds bit-identical parameters and buffers (elementwise max and
    min over the processes agree)."""
    if not env.enabled:
        return True
    values = torch.cat([t.detach().float().flatten() for t in model.state_dict().values() if t.is_floating_point()])
    high, low = values.clone(), values.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return bool(torch.equal(high, low))
