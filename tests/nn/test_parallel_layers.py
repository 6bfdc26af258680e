"""Tensor-parallel shards (torch.distributed, gloo on CPU): the summed shards equal the full layer."""

import socket
import subprocess
import sys
import threading

import pytest

torch = pytest.importorskip("torch")
import torch.multiprocessing as mp  # noqa: E402

from kvcalc.nn.attention import Attention  # noqa: E402
from kvcalc.nn.parallel import Shard, shard_layer  # noqa: E402
from kvcalc.nn.recurrent import GatedDeltaNet, KimiDeltaAttention, LightningAttention, Mamba, Mamba2  # noqa: E402
from tests.nn.shard_worker import decode_all  # noqa: E402


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
    rows = json.loads(out)["rows"]
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


# Recurrent mixers: each rank's shard run side by side in a thread, its sums over every head (``tp_sum``:
# lightning's and Mamba2's norm, Mamba's x_proj) exchanged in process; the summed outputs equal the full
# layer's, and each shard holds the analytic per-GPU state.

TINY = {"name": "tiny", "display_name": "Tiny", "num_layers": 2, "hidden_size": 32,
        "attention": {"kind": "standard", "num_heads": 4, "num_kv_heads": 2, "head_dim": 8}}
GDN = {"kind": "gated_deltanet", "num_k_heads": 2, "num_v_heads": 4, "head_k_dim": 8, "head_v_dim": 6, "conv_kernel": 4}
MAMBA2 = {"kind": "mamba2", "num_heads": 4, "head_dim": 6, "d_state": 5, "conv_kernel": 3}
MIXER_CASES = {  # id: (layer kind, mixer, tp)
    "gated_deltanet": ("recurrent", GDN, 2),
    "kda": ("recurrent", {"kind": "kda", "num_heads": 4, "head_dim": 6, "conv_kernel": 4}, 4),
    "lightning": ("recurrent", {"kind": "lightning", "num_heads": 4, "head_dim": 6}, 2),
    "mamba2-1-group": ("recurrent", {**MAMBA2, "n_groups": 1}, 2),  # the group copied to both ranks
    "mamba2-4-groups": ("recurrent", {**MAMBA2, "n_groups": 4}, 2),
    "mamba2-2-groups-tp-4": ("recurrent", {**MAMBA2, "n_groups": 2}, 4),
    "mamba": ("recurrent", {"kind": "mamba", "intermediate_size": 12, "d_state": 4, "conv_kernel": 3}, 2),
    "hybrid": ("hybrid", {**MAMBA2, "n_groups": 1}, 2),  # Falcon-H1: GQA and Mamba2 side by side
}


class ThreadedSum:
    """An all-reduce for shards run in threads: every rank gets the sum of all ranks' partials."""

    def __init__(self, world: int) -> None:
        self.partials = [None] * world
        self.barrier = threading.Barrier(world, timeout=60)

    def for_rank(self, rank: int):
        def tp_sum(partial):
            self.partials[rank] = partial
            self.barrier.wait()
            total = sum(self.partials)
            self.barrier.wait()  # all have read before any rank writes its next partial
            return total

        return tp_sum


def run_shards(shards, x, prefill):
    """Each shard's decode_all in its own thread, with a ThreadedSum for its tp_sum."""
    summed, results = ThreadedSum(len(shards)), [None] * len(shards)
    for rank, shard in enumerate(shards):
        for module in shard.modules():
            if hasattr(module, "tp_sum"):
                module.tp_sum = summed.for_rank(rank)

    def run(rank):
        try:
            results[rank] = decode_all(shards[rank], x, prefill)
        except BaseException as e:  # free the other ranks' barrier, then fail the test
            results[rank] = e
            summed.barrier.abort()

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(len(shards))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def randomised(layer):
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * (p.shape[-1] ** -0.5 if p.dim() > 1 else 0.5))
    return layer


@pytest.mark.parametrize(("kind", "mixer", "tp"), MIXER_CASES.values(), ids=MIXER_CASES)
def test_sharded_mixers_equal_the_full_layer(kind, mixer, tp):
    from kvcalc.analytic import Layout, Options, footprint
    from kvcalc.measure import make_layer
    from kvcalc.parallel import Parallel
    from kvcalc.spec import LayerKind, ModelSpec

    spec = ModelSpec.from_dict({**TINY, "layer_pattern": [kind, "full"] if kind == "recurrent" else [kind],
                                "recurrent": mixer})
    torch.manual_seed(0)
    full = randomised(make_layer(spec, LayerKind(kind), Layout.LATENT, torch.device("cpu"), torch.float32))
    x = torch.randn(2, 9, 32)
    expected, _ = decode_all(full, x, 5)
    results = run_shards([shard_layer(full, Shard(rank, tp)) for rank in range(tp)], x, 5)
    torch.testing.assert_close(sum(out for out, _ in results), expected, atol=1e-5, rtol=1e-4)
    fp = footprint(spec, Options(9, batch=2, kv_dtype="fp32", engine="transformers", parallel=Parallel(tp=tp)))
    per_gpu = sum(p.bytes_per_token_layer * p.cells for p in fp.gpu_parts if p.layer_kind == kind)
    assert [nbytes for _, nbytes in results] == [per_gpu] * tp


def test_mamba2_groups_are_copied_to_the_ranks_that_read_them():
    full = randomised(Mamba2(32, num_heads=4, head_dim=6, d_state=5, n_groups=1, conv_kernel=3))
    local = shard_layer(full, Shard(rank=1, size=2))  # heads 2 and 3; the one group, whole
    assert (local.heads, local.groups, local.channels) == (2, 1, 2 * 6 + 2 * 5)
    b_rows = slice(24 + 24, 24 + 24 + 5)  # in_proj: z (24), x (24), then B
    torch.testing.assert_close(local.in_proj.weight[12 + 12 : 12 + 12 + 5], full.in_proj.weight[b_rows])
    with pytest.raises(ValueError, match="tp 3 and the 2 groups must divide one another"):
        shard_layer(Mamba2(32, num_heads=6, head_dim=4, d_state=5, n_groups=2, conv_kernel=3), Shard(0, 3))


def test_a_shard_sums_across_ranks_only_inside_tensor_parallel():
    full = randomised(LightningAttention(32, num_heads=4, head_dim=6))
    with pytest.raises(RuntimeError, match="wrap it in TensorParallel"):
        shard_layer(full, Shard(0, 2))(torch.randn(1, 3, 32))


@pytest.mark.parametrize("make", [
    lambda: GatedDeltaNet(32, 2, 4, 8, 6, 4, dt_bias=True, norm_eps=1e-3),
    lambda: KimiDeltaAttention(32, 4, 6, 4, norm_eps=1e-3),
    lambda: Mamba2(32, num_heads=4, head_dim=6, d_state=5, n_groups=2, conv_kernel=3, dt_bias=True, conv_bias=True,
                   norm_groups=2, norm_eps=1e-3),
    lambda: Mamba(32, 12, 4, 3, 2, norm_eps=1e-3),
], ids=["gated_deltanet", "kda", "mamba2", "mamba"])
def test_a_shard_keeps_the_layers_settings(make):
    """What from_config sets (a norm's eps, the optional biases) survives the split."""
    full = randomised(make())
    local = shard_layer(full, Shard(rank=1, size=2))
    assert local.norm_eps == full.norm_eps == 1e-3
    assert {n for n, _ in local.named_parameters()} == {n for n, _ in full.named_parameters()}
