"""Run inside spawned ranks by test_parallel_layers.py: each rank checks its shard against the
full layer built from the same seed (fp32)."""


import torch
import torch.distributed as dist

from kvcalc.nn.attention import Attention
from kvcalc.nn.mla import MLA
from kvcalc.nn.parallel import Shard, TensorParallel, shard_layer

TOL = {"atol": 1e-5, "rtol": 1e-4}

def varied(layer):
    """``layer`` with its vectors (biases, norms, sinks) away from their init, so each one's shard matters."""
    with torch.no_grad():
        for param in layer.parameters():
            if param.dim() == 1:
                param.normal_(0, 0.5)
    return layer


CASES = {
    "gqa": lambda: Attention(64, 8, 4, 8),  # 4 KV heads split over the ranks
    "gqa-replicated": lambda: Attention(64, 8, 1, 8),  # 1 KV head, copied to every rank
    "sliding": lambda: Attention(64, 8, 2, 8, window=4),
    "chunked": lambda: Attention(64, 8, 2, 8, chunk=4),
    # gpt-oss: biases (o_proj's added once) and a sink per query head, kept with the head
    "sinks-biases": lambda: varied(Attention(64, 8, 2, 8, window=4, qkv_bias=True, o_bias=True, sinks=True)),
    # Gemma: replicated per-head q/k norms, its own scale, softcap
    "qk-norm-softcap": lambda: varied(Attention(64, 8, 2, 8, qk_norm="gemma", scale=0.2, softcap=3.0)),
    "no-rope": lambda: Attention(64, 8, 2, 8, rotates=False),  # Nemotron-H's attention
    "mla-latent": lambda: MLA(64, 4, 24, 32, 16, 8, 12, layout="latent"),
    "mla-decompressed": lambda: MLA(64, 4, None, 32, 16, 8, 12, layout="decompressed"),
    # DSA: the indexer (its weights and its fp8 key cache) is replicated like the latent
    "mla-dsa": lambda: MLA(64, 4, 24, 32, 16, 8, 12, layout="latent", index_n_heads=2, index_head_dim=16,
                           index_topk=3),
}


def decode_all(layer, x, prefill):
    cache = layer.allocate_cache(x.shape[0], x.shape[1], torch.float32)
    outs = [layer(x[:, :prefill])] + [layer(x[:, t : t + 1], start_pos=t) for t in range(prefill, x.shape[1])]
    return torch.cat(outs, dim=1), cache.nbytes


def held_fraction(full, world: int):
    """KV-CACHE-FACTS section 4: max(1, n_kv // tp) KV heads per rank; the MLA latent whole."""
    from fractions import Fraction

    if isinstance(full, MLA):
        return Fraction(1) if full.layout == "latent" else Fraction(1, world)
    return Fraction(max(1, full.num_kv_heads // world), full.num_kv_heads)


def check_rank(rank: int, world: int, init: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        for name, make in CASES.items():
            torch.manual_seed(0)
            full = make()
            x = torch.randn(2, 9, 64)
            expected, full_bytes = decode_all(full, x, 5)
            got, shard_bytes = decode_all(TensorParallel(shard_layer(full, Shard(rank, world))), x, 5)
            torch.testing.assert_close(got, expected, **TOL, msg=lambda m: f"{name}: {m}")
            assert shard_bytes == full_bytes * held_fraction(full, world), name
    finally:
        dist.destroy_process_group()
