"""Tensor-parallel shards (torch.distributed, gloo on CPU): the summed shards equal the full layer."""

import socket
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
import torch.multiprocessing as mp  # noqa: E402

from kvcalc.nn.attention import Attention  # noqa: E402
from kvcalc.nn.parallel import Shard, shard_layer  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_layers_equal_the_full_layer(world):
    # fp32, atol 1e-5 / rtol 1e-4: the shards' partial outputs are summed by an all-reduce
    from tests.nn.shard_worker import check_rank

    mp.start_processes(check_rank, args=(world, f"tcp://127.0.0.1:{free_port()}"), nprocs=world,
                       join=True, start_method="spawn")


def test_shard_shapes_follow_the_heads():
    full = Attention(64, 8, 2, 8)
    local = shard_layer(full, Shard(rank=3, size=4))  # 2 query heads; KV head 1 of 2 (replicated 2x)
    assert (local.num_heads, local.num_kv_heads) == (2, 1)
    torch.testing.assert_close(local.k_proj.weight, full.k_proj.weight[8:16])
    with pytest.raises(ValueError, match="tp 3 does not divide the 8 query heads"):
        shard_layer(full, Shard(0, 3))


def test_cli_measure_tp_2(cli):
    import json

    status, out, _ = cli("measure", "deepseek-v2-lite", "qwen2.5-7b", "--tp", "2", "--device", "cpu",
                         "--seq", "64", "--decode-steps", "2", "-f", "json")
    assert status == 0
    rows = json.loads(out)
    assert [(r["model"], r["rank"], r["match"]) for r in rows] == [
        ("deepseek-v2-lite", 0, True), ("deepseek-v2-lite", 1, True),
        ("qwen2.5-7b", 0, True), ("qwen2.5-7b", 1, True),
    ]
    assert rows[0]["measured_bytes"] == rows[1]["measured_bytes"] == 576 * 2 * 64  # latent on every rank
    assert rows[2]["measured_bytes"] == 2 * 4 * 128 * 2 * 64 // 2  # 4 KV heads: two per rank


def test_cli_tp_that_does_not_divide_the_heads(cli):
    status, _, err = cli("measure", "llama-3.1-8b", "--tp", "3", "--device", "cpu", "--seq", "16")
    assert status == 2
    assert err == "kvcalc: error: --tp 3: attention tp 3 does not divide llama-3.1-8b's 32 query heads\n"


def test_torchrun_joins_its_process_group():
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(free_port()), "-m", "kvcalc", "measure", "llama-3.1-8b", "--tp", "2",
           "--device", "cpu", "--seq", "32", "--decode-steps", "1", "-f", "csv"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("llama-3.1-8b")]
    assert len(lines) == 2  # rank 0 printed one row per rank; rank 1 printed nothing
