"""Block configurations: the defaults and the small autotuning sweeps of the GPU check.

Every entry is a dict of keyword arguments of `paged_decode_attention` /
`ragged_paged_attention`; tests/pallas_kernels/test_lowering.py lowers each one for CUDA so
the one GPU run never dies on a lowering error (Triton resource limits such as shared
memory are only seen on the GPU; the sweep records those as errors and goes on).
"""
from __future__ import annotations

# Decode: KV tile (tokens per inner step), Triton warps and pipeline stages. Ordered by
# prior likelihood of winning, so a sweep cut short by its time budget tried the best bets.
DECODE_SWEEP = [
    {"block_kv": 64, "num_warps": 2, "num_stages": 4},    # default (best of the 1st sweep)
    {"block_kv": 64, "num_warps": 4, "num_stages": 2},
    {"block_kv": 64, "num_warps": 2, "num_stages": 6},
    {"block_kv": 64, "num_warps": 1, "num_stages": 4},
    {"block_kv": 32, "num_warps": 2, "num_stages": 4},
    {"block_kv": 128, "num_warps": 4, "num_stages": 4},
    {"block_kv": 128, "num_warps": 4, "num_stages": 2},   # the first run's default
    {"block_kv": 64, "num_warps": 4, "num_stages": 4},
]

# Multipliers of the automatic flash-decoding split count tried for the best config.
SPLIT_FACTORS = (0.5, 2.0, 4.0)

RAGGED_SWEEP = [
    {"block_q_rows": 64, "block_kv": 64, "num_warps": 4, "num_stages": 2},   # default
    {"block_q_rows": 64, "block_kv": 64, "num_warps": 4, "num_stages": 3},
    {"block_q_rows": 128, "block_kv": 64, "num_warps": 8, "num_stages": 2},
    {"block_q_rows": 64, "block_kv": 128, "num_warps": 4, "num_stages": 2},
    {"block_q_rows": 32, "block_kv": 64, "num_warps": 4, "num_stages": 2},
]


def config_name(cfg: dict) -> str:
    short = {"block_kv": "bkv", "num_warps": "w", "num_stages": "st", "num_splits": "sp",
             "block_q_rows": "bq"}
    return "_".join(f"{short.get(k, k)}{v}" for k, v in sorted(cfg.items()))
