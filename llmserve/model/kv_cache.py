"""Paged KV cache: per layer a (k, v) pair, each [num_kv_heads, num_blocks, block_size, head_dim].

The cache is a pytree returned by every forward call, never mutated; the runner donates it so
XLA updates it in place.
"""
from __future__ import annotations

import jax.numpy as jnp

from llmserve.model.config import ModelConfig


def kv_bytes_per_block(cfg: ModelConfig, block_size: int, dtype=None) -> int:
    itemsize = jnp.dtype(dtype or cfg.dtype).itemsize
    return 2 * cfg.num_layers * cfg.num_kv_heads * block_size * cfg.head_dim * itemsize


def num_blocks_for_memory(cfg: ModelConfig, block_size: int, memory_bytes: int, dtype=None) -> int:
    n = memory_bytes // kv_bytes_per_block(cfg, block_size, dtype)
    if n < 1:
        raise ValueError(f"kv memory budget of {memory_bytes} bytes holds no block of "
                         f"{kv_bytes_per_block(cfg, block_size, dtype)} bytes")
    return int(n)


def init_kv_cache(cfg: ModelConfig, num_blocks: int, block_size: int, dtype=None):
    shape = (cfg.num_kv_heads, num_blocks, block_size, cfg.head_dim)
    dt = jnp.dtype(dtype or cfg.dtype)
    return [(jnp.zeros(shape, dt), jnp.zeros(shape, dt)) for _ in range(cfg.num_layers)]


def write_kv(k_pages, v_pages, k_new, v_new, slot_mapping):
    """Scatter new K/V [T, Hkv, D] into the pages at flat slots block*block_size + offset.

    Slots outside the pool (padding tokens use num_blocks * block_size) are dropped.
    """
    hkv, nb, bs, d = k_pages.shape
    kf = k_pages.reshape(hkv, nb * bs, d)
    vf = v_pages.reshape(hkv, nb * bs, d)
    kf = kf.at[:, slot_mapping].set(k_new.transpose(1, 0, 2).astype(kf.dtype), mode="drop")
    vf = vf.at[:, slot_mapping].set(v_new.transpose(1, 0, 2).astype(vf.dtype), mode="drop")
    return kf.reshape(hkv, nb, bs, d), vf.reshape(hkv, nb, bs, d)
