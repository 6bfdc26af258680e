"""Ctrl-C and SIGTERM stop ``kvcalc measure``: one line on stderr, exit 128 + signal, and no process
left behind -- not a rank of ``--tp``, not multiprocessing's resource tracker. Linux: reads /proc."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")

# Minutes of decoding even on a big machine, in little memory (the host check asks ~7 GiB).
MEASURE = ("measure", "llama-3.1-8b", "--seq", "16k", "--layers", "8", "--decode-steps", "16000",
           "--device", "cpu")
MEASURING_RSS_KIB = 1 << 20  # torch alone is ~0.3 GiB; eight layers with their caches are ~1.2 GiB more


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def children(pid: int) -> dict[int, str]:
    """The processes whose parent is ``pid``: their start time (tells a reused pid apart), by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        fields = proc_stat(int(entry.name)) if entry.name.isdigit() else None
        if fields and int(fields[1]) == pid:
            found[int(entry.name)] = fields[19]
    return found


def running(pid: int, started: str) -> bool:
    fields = proc_stat(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"  # a zombie is gone


def is_rank(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()  # not the resource tracker
    except OSError:
        return False


def joined(pid: int) -> bool:
    """Whether a rank holds a socket: it has reached the process group, in ``_spawned``."""
    try:
        return any(os.readlink(fd).startswith("socket:") for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)


def wait_for(condition, timeout_s: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"kvcalc ended before {what}: {process.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.1)


@pytest.fixture
def kvcalc(tmp_path):
    """Start ``kvcalc ARGS...`` in a session of its own (as a terminal would: one process group);
    whatever the test leaves running is killed afterwards."""
    started = []

    def start(*args: str) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-m", "kvcalc", *args], cwd=tmp_path, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        started.append(process)
        return process

    yield start
    for process in started:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.communicate()


def assert_one_line(process: subprocess.Popen, status: int, word: str) -> None:
    out, err = process.communicate(timeout=30)
    assert process.returncode == status, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()][-1] == f"kvcalc: error: {word}", err


def assert_all_gone(processes: dict[int, str]) -> None:
    wait_for(lambda: not any(running(pid, started) for pid, started in processes.items()), 10,
             f"every child of kvcalc ends: {processes}")


def start_ranks(kvcalc, phase: str) -> tuple[subprocess.Popen, dict[int, str]]:
    """``measure --tp 2`` once both ranks are "starting" (importing torch) or have "joined" the
    process group and measure; kvcalc and its children (the ranks, the resource tracker)."""
    process = kvcalc(*MEASURE, "--tp", "2")

    def ranks() -> list[int]:
        return [pid for pid in children(process.pid) if is_rank(pid)]

    wait_for(lambda: len(ranks()) == 2, 30, "two ranks start", process)
    if phase == "joined":
        wait_for(lambda: all(map(joined, ranks())), 30, "the ranks join", process)
    return process, children(process.pid)


def test_ctrl_c_to_kvcalc_stops_every_rank(kvcalc):
    process, spawned = start_ranks(kvcalc, "joined")
    os.kill(process.pid, signal.SIGINT)
    assert_one_line(process, 130, "interrupted")
    assert_all_gone(spawned)


def test_sigterm_to_kvcalc_stops_every_rank(kvcalc):
    process, spawned = start_ranks(kvcalc, "starting")
    os.kill(process.pid, signal.SIGTERM)
    assert_one_line(process, 143, "terminated")
    assert_all_gone(spawned)


@pytest.mark.parametrize("phase", ["starting", "joined"])
def test_ctrl_c_in_the_terminal_stops_every_rank_quietly(kvcalc, phase):
    process, spawned = start_ranks(kvcalc, phase)
    os.killpg(process.pid, signal.SIGINT)  # the terminal signals its whole foreground group
    assert_one_line(process, 130, "interrupted")
    assert_all_gone(spawned)


def test_ctrl_c_while_measuring_on_one_process(kvcalc):
    process = kvcalc(*MEASURE)
    wait_for(lambda: rss_kib(process.pid) > MEASURING_RSS_KIB, 30, "kvcalc measures", process)
    os.kill(process.pid, signal.SIGINT)
    assert_one_line(process, 130, "interrupted")
