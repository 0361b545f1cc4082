"""Data-parallel training across processes (torchrun): gloo on CPU, NCCL on GPU.

Launch the usual command under torchrun, e.g.
``torchrun --nproc_per_node 2 -m tandem train --data ... --lists ... --out ...``. Each optimiser
step's global batch of ``batch_size`` lists is split across the ranks; every rank runs forward and
backward on its share, gradients are averaged (weighted by each rank's share, so the update equals
one process's on the whole batch), and every rank steps the same optimiser state. Rank 0 alone
writes logs, checkpoints and models; any number of processes resumes any checkpoint.
"""

from __future__ import annotations

import os
from typing import Iterable

import torch
import torch.distributed as dist


def world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)``, initialising the process group when launched by torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1, 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), local


def sum_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum gradients over ranks in one flat all-reduce (missing grads count as zeros).

    Each rank scaled its loss by its share of the global batch, so the sum is the gradient of the
    global batch's mean loss, as one process would compute it.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    at = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[at : at + n].view_as(p.grad))
        at += n


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Start every rank from rank 0's weights."""
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, 0)


def mean_over_ranks(values: dict[str, float], weight: float) -> dict[str, float]:
    """``sum_r weight_r * value_r`` for each key (weights are the ranks' shares of the batch)."""
    if not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] * weight for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
