"""Block configurations: the defaults and the small autotuning sweeps of the GPU check.

Every entry is a dict of keyword arguments of `paged_decode_attention` /
`ragged_paged_attention`; tests/pallas_kernels/test_lowering.py lowers each one for CUDA so
the one GPU run never dies on a lowering error (Triton resource limits such as shared
memory are only seen on the GPU; the sweep records those as errors and goes on).
"""
from __future__ import annotations

# Decode: KV tile (tokens per inner step), Triton warps and pipeline stages. Ordered by
# prior likelihood of winning, so a sweep cut short by its time budget tried the best bets.
# With the row ids prefetched (the default), num_stages - 1 K/V tiles are in flight per
# program; shared memory per program is (num_stages - 1) * 2 * block_kv * D * 2 bytes.
DECODE_SWEEP = [
    {"block_kv": 64, "num_warps": 2, "num_stages": 4},    # default
    {"block_kv": 64, "num_warps": 2, "num_stages": 3},
    {"block_kv": 64, "num_warps": 4, "num_stages": 4},
    {"block_kv": 32, "num_warps": 2, "num_stages": 6},
    {"block_kv": 64, "num_warps": 2, "num_stages": 5},
    {"block_kv": 32, "num_warps": 1, "num_stages": 4},
    {"block_kv": 128, "num_warps": 4, "num_stages": 3},
    {"block_kv": 64, "num_warps": 1, "num_stages": 3},
    # the first version's loop (page ids loaded in the same iteration) at its best configs
    {"block_kv": 64, "num_warps": 2, "num_stages": 4, "prefetch_rows": False},
    {"block_kv": 64, "num_warps": 2, "num_stages": 6, "prefetch_rows": False},
]

# The first version's launch configuration, timed beside the default at every decode and
# ragged shape of the GPU check (a same-run ratio).
DECODE_LEGACY = {"block_kv": 64, "num_warps": 2, "num_stages": 4, "prefetch_rows": False}
RAGGED_LEGACY = {"block_q_rows": 64, "block_kv": 64, "num_warps": 4, "num_stages": 2,
                 "decode_num_warps": 4, "decode_num_stages": 2, "prefetch_rows": False}

# Multipliers of the automatic flash-decoding split count tried for the best config.
SPLIT_FACTORS = (0.5, 2.0, 4.0)

RAGGED_SWEEP = [
    {},                                                                      # default
    {"num_stages": 2},
    {"num_stages": 4},
    {"block_q_rows": 128, "num_warps": 8},
    {"block_q_rows": 32},
    {"block_kv": 32, "num_stages": 5},
    {"decode_num_warps": 4, "decode_num_stages": 4},
    {"decode_num_warps": 2, "decode_num_stages": 3},
    {"fused": True},
    {"fused": True, "num_stages": 2},
    {"fused": True, "block_q_rows": 32, "num_warps": 2, "num_stages": 4},
    {"fused": True, "block_q_rows": 128, "num_warps": 8, "num_stages": 2},
    RAGGED_LEGACY,
]


def config_name(cfg: dict) -> str:
    short = {"block_kv": "bkv", "num_warps": "w", "num_stages": "st", "num_splits": "sp",
             "block_q_rows": "bq", "decode_num_warps": "dw", "decode_num_stages": "dst",
             "prefetch_rows": "pf", "fused": "fused"}
    if not cfg:
        return "default"
    return "_".join(f"{short.get(k, k)}{v}" for k, v in sorted(cfg.items()))
