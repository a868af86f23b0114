"""Paged decode attention: one query token per sequence over its KV pages.

k_pages, v_pages [num_kv_heads, num_pages, page_size, head_dim]; block_tables [B, max_pages]
int32; seq_lens [B] int32 (context length including the new token, already in the pages).
"""
from __future__ import annotations

import jax.numpy as jnp


def paged_decode_attention_reference(q, k_pages, v_pages, block_tables, seq_lens, *,
                                     sm_scale=None):
    """Plain-jnp oracle. q [B, Hq, D] -> [B, Hq, D]; zero-length sequences give zeros."""
    batch, num_heads, head_dim = q.shape
    num_kv_heads, _, page_size, _ = k_pages.shape
    group = num_heads // num_kv_heads
    if sm_scale is None:
        sm_scale = head_dim ** -0.5
    ctx = block_tables.shape[1] * page_size
    k = k_pages[:, block_tables].reshape(num_kv_heads, batch, ctx, head_dim)
    v = v_pages[:, block_tables].reshape(num_kv_heads, batch, ctx, head_dim)
    qg = q.reshape(batch, num_kv_heads, group, head_dim).astype(jnp.float32)
    s = jnp.einsum("bkgd,kbld->bkgl", qg, k.astype(jnp.float32)) * sm_scale
    mask = jnp.arange(ctx)[None, :] < seq_lens[:, None]
    s = jnp.where(mask[:, None, None, :], s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
    denom = jnp.sum(p, axis=-1, keepdims=True)
    o = jnp.einsum("bkgl,kbld->bkgd", p, v.astype(jnp.float32))
    o = jnp.where(denom > 0, o / jnp.where(denom > 0, denom, 1.0), 0.0)
    return o.reshape(batch, num_heads, head_dim).astype(q.dtype)
