"""``kvcalc measure --tp N`` across ranks, on PyTorch's own distributed runtime.

Launched by hand, kvcalc starts N ranks with ``torch.multiprocessing`` (gloo on CPU, NCCL on CUDA,
one GPU per rank) and they meet at a TCP rendezvous on this host. Launched by ``torchrun`` (its
environment present), each process joins that process group instead, so the same command spans
machines:

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m kvcalc measure deepseek-v3 --tp 16

Every rank measures its own shard; rank 0 gathers the rows (``gather_object``) and renders them.
A rank that fails stops the others: ``torch.multiprocessing`` terminates the survivors when one
process dies (torchrun does the same), and the process group has a timeout, so nothing hangs.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kvcalc.errors import KvcalcError, OptionError
from kvcalc.measure import Measurement, MeasureOptions, measure
from kvcalc.nn.parallel import Shard
from kvcalc.spec import ModelSpec

TIMEOUT = timedelta(minutes=10)

Job = tuple[ModelSpec, MeasureOptions]


def under_torchrun() -> bool:
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def measure_ranks(jobs: Sequence[Job], tp: int, device: str) -> list[Measurement] | None:
    """Every job's rows, one per rank (job by job, rank 0 first); None on ranks other than 0."""
    kind = _device_kind(device)
    if under_torchrun():
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        if world != tp:
            raise OptionError(f"--tp {tp}: torchrun started {world} processes; they must match")
        local = int(os.environ.get("LOCAL_RANK", rank))
        return _rank_main(rank, tp, list(jobs), kind, local, "env://")
    if kind == "cuda" and tp > torch.cuda.device_count():
        raise OptionError(f"--tp {tp}: more ranks than the {torch.cuda.device_count()} CUDA devices here")
    results = mp.get_context("spawn").SimpleQueue()
    init = f"tcp://127.0.0.1:{_free_port()}"
    try:
        mp.start_processes(_spawned, args=(tp, list(jobs), kind, init, results), nprocs=tp,
                           join=True, start_method="spawn")
    except mp.ProcessRaisedException as e:
        raise KvcalcError(f"rank {e.error_index} failed: {_last_line(e.msg)}") from None
    except mp.ProcessExitedException as e:
        raise KvcalcError(f"rank {e.error_index} died ({e.exit_code}); every rank was stopped") from None
    return results.get()


def _spawned(rank: int, world: int, jobs: list[Job], kind: str, init: str, results) -> None:
    rows = _rank_main(rank, world, jobs, kind, rank, init)
    if rank == 0:
        results.put(rows)


def _rank_main(rank: int, world: int, jobs: list[Job], kind: str, local: int, init: str):
    device = torch.device(f"cuda:{local}") if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # ranks share the cores
    dist.init_process_group("nccl" if kind == "cuda" else "gloo", init_method=init, rank=rank,
                            world_size=world, timeout=TIMEOUT)
    try:
        rows = [measure(spec, options, device, Shard(rank, world)) for spec, options in jobs]
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(rows, gathered, dst=0)
    finally:
        dist.destroy_process_group()
    if rank != 0:
        return None
    return [row for job_rows in zip(*gathered, strict=True) for row in job_rows]


def _device_kind(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError(f"--device {device}: no CUDA device is available (torch {torch.__version__})")
        return "cuda"
    if device != "cpu":
        raise OptionError(f"--device {device}: expected auto, cpu or cuda")
    return "cpu"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_line(message: str) -> str:
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
