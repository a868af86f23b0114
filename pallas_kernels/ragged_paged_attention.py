"""Ragged paged attention: a flat batch of prefill chunks and decode tokens over paged KV.

Layout shared with the model's cache: k_pages, v_pages [num_kv_heads, num_pages, page_size,
head_dim]. Sequence i owns query rows q[query_start_loc[i]:query_start_loc[i+1]], which sit
at the last positions of its seq_lens[i] context tokens (their K/V already in the pages) and
attend causally. Rows beyond query_start_loc[num_seqs] are padding and come back as zeros.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def token_metadata(query_start_loc, seq_lens, num_seqs, num_tokens):
    """Per query row: its sequence index, absolute position, and whether it is real."""
    t = jnp.arange(num_tokens, dtype=jnp.int32)
    # Sequence i covers rows [qsl[i], qsl[i+1]); padded sequences (i >= num_seqs) are empty
    # ranges, so searchsorted lands every real row on its own sequence.
    seq_id = jnp.searchsorted(query_start_loc[1:], t, side="right").astype(jnp.int32)
    seq_id = jnp.minimum(seq_id, seq_lens.shape[0] - 1)
    valid = t < query_start_loc[jnp.minimum(num_seqs, seq_lens.shape[0])]
    q_len = query_start_loc[seq_id + 1] - query_start_loc[seq_id]
    pos = seq_lens[seq_id] - q_len + (t - query_start_loc[seq_id])
    return seq_id, pos, valid


def ragged_paged_attention_reference(q, k_pages, v_pages, block_tables, seq_lens,
                                     query_start_loc, num_seqs, *, sm_scale=None):
    """Plain-jnp oracle. q [T, Hq, D] -> [T, Hq, D]; softmax in float32."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads, _, page_size, _ = k_pages.shape
    group = num_heads // num_kv_heads
    if sm_scale is None:
        sm_scale = head_dim ** -0.5
    seq_id, pos, valid = token_metadata(query_start_loc, seq_lens, num_seqs, num_tokens)
    pages = block_tables[seq_id]                                  # [T, P]
    ctx = pages.shape[1] * page_size
    k = k_pages[:, pages].reshape(num_kv_heads, num_tokens, ctx, head_dim)
    v = v_pages[:, pages].reshape(num_kv_heads, num_tokens, ctx, head_dim)
    qg = q.reshape(num_tokens, num_kv_heads, group, head_dim)
    s = jnp.einsum("tkgd,ktld->tkgl", qg.astype(jnp.float32), k.astype(jnp.float32)) * sm_scale
    mask = (jnp.arange(ctx)[None, :] <= pos[:, None]) & valid[:, None]   # [T, L]
    s = jnp.where(mask[:, None, None, :], s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
    denom = jnp.sum(p, axis=-1, keepdims=True)
    o = jnp.einsum("tkgl,ktld->tkgd", p, v.astype(jnp.float32))
    o = jnp.where(denom > 0, o / jnp.where(denom > 0, denom, 1.0), 0.0)
    return o.reshape(num_tokens, num_heads, head_dim).astype(q.dtype)
