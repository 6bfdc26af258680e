"""``kvcalc measure --tp N`` across ranks, on PyTorch's own distributed runtime.

Launched by hand, kvcalc starts N ranks with ``torch.multiprocessing`` (gloo on CPU, NCCL on CUDA,
one GPU per rank) and they meet at a TCP rendezvous on this host. Launched by ``torchrun`` (its
environment present), each process joins that process group instead, so the same command spans
machines:

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m kvcalc measure deepseek-v3 --tp 16

Every rank measures its own shard; rank 0 gathers the rows (pickled into byte tensors: the
``measure`` extra has no numpy, which ``gather_object`` needs) and renders them. A rank that fails
stops the others: ``torch.multiprocessing`` terminates the survivors when one process dies (torchrun
does the same), and the process group has a timeout, so nothing hangs. Interrupted (Ctrl-C,
SIGTERM), the launching process stops every rank it started before the interruption goes on.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kvcalc.errors import KvcalcError, OptionError
from kvcalc.measure import Measurement, MeasureOptions, measure
from kvcalc.nn.parallel import Shard
from kvcalc.spec import ModelSpec

TIMEOUT = timedelta(minutes=10)
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}

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
        _run_spawned(tp, (tp, list(jobs), kind, init, results))
    except mp.ProcessRaisedException as e:
        raise KvcalcError(f"rank {e.error_index} failed: {_last_line(e.msg)}") from None
    except mp.ProcessExitedException as e:
        raise KvcalcError(f"rank {e.error_index} died ({e.exit_code}); every rank was stopped") from None
    return results.get()


def _run_spawned(tp: int, args: tuple) -> None:
    """Run ``_spawned`` on ``tp`` new processes to the end. However this returns or raises (a rank
    failed, Ctrl-C, SIGTERM), no rank is left running."""
    ranks = None
    try:
        with _signals_held():
            ranks = mp.start_processes(_spawned, args=args, nprocs=tp, join=False, start_method="spawn")
        while not ranks.join():
            pass
    finally:
        if ranks is not None:
            with _signals_held():
                _stop(ranks.processes)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block is done, then raise the first that came.

    Starting the ranks and stopping them are not cut short. Processes started meanwhile inherit the
    blocked mask: a Ctrl-C to the terminal's whole process group while a rank imports torch waits
    for ``_spawned`` instead of printing a traceback (multiprocessing's resource_tracker starts the
    same way). The mask alone is not enough here: torch's own thread would take the signal."""
    held = []
    handlers = {sig: signal.signal(sig, lambda signum, frame: held.append(signum)) for sig in STOP_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if held:
        signal.raise_signal(held[0])


def _stop(processes, grace_s: float = 5.0) -> None:
    """SIGTERM the processes still running; SIGKILL those still there after ``grace_s``."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _spawned(rank: int, world: int, jobs: list[Job], kind: str, init: str, results) -> None:
    # Ctrl-C ends a rank at once and quietly (the launcher reports it), as does the launcher's
    # death, which torch.multiprocessing turns into SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
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
        gathered = _gather(rows, device)
    finally:
        dist.destroy_process_group()
    if rank != 0:
        return None
    return [row for job_rows in zip(*gathered, strict=True) for row in job_rows]


def _gather(rows: list[Measurement], device: torch.device) -> list[list[Measurement]]:
    """Every rank's rows, in rank order: each rank's pickle, padded to the longest, all-gathered."""
    data = torch.frombuffer(bytearray(pickle.dumps(rows)), dtype=torch.uint8).to(device)
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([data.numel()], device=device))
    sizes = [int(count) for count in counts]
    padded = torch.zeros(max(sizes), dtype=torch.uint8, device=device)
    padded[: data.numel()] = data
    chunks = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(chunks, padded)
    return [pickle.loads(bytes(chunk[:size].tolist())) for chunk, size in zip(chunks, sizes, strict=True)]


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
