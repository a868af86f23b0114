"""The Llama-family forward pass over a flat ragged batch and a paged KV cache."""
from __future__ import annotations

import jax.numpy as jnp

from llmserve.model.attention import AttentionMetadata, paged_attention
from llmserve.model.config import ModelConfig
from llmserve.model.kv_cache import write_kv
from llmserve.model.layers import apply_rope, gated_mlp, rms_norm, rope_inv_freq


def forward(params, cfg: ModelConfig, token_ids, positions, kv_cache, attn_md: AttentionMetadata,
            logits_indices=None, attention_impl: str = "reference", attention_fn=None):
    """token_ids, positions [T] -> (logits [T or len(logits_indices), V] float32, kv_cache).

    Every token of every scheduled request (prefill chunks and decode tokens alike) is one
    row; logits_indices picks the rows whose next token is sampled, so the vocabulary
    projection is only paid for them. attention_fn replaces paged_attention (same signature):
    tensor parallelism runs it per device on that device's heads (model/sharding.py).
    """
    attend = attention_fn or paged_attention
    t = token_ids.shape[0]
    hq, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    inv_freq = rope_inv_freq(cfg)
    x = params["embed"][token_ids]
    new_cache = []
    for layer, (k_pages, v_pages) in zip(params["layers"], kv_cache):
        h = rms_norm(x, layer["attn_norm"], cfg.rms_norm_eps)
        q, k, v = h @ layer["wq"], h @ layer["wk"], h @ layer["wv"]
        if cfg.attention_bias:
            q, k, v = q + layer["bq"], k + layer["bk"], v + layer["bv"]
        q = apply_rope(q.reshape(t, hq, d), positions, inv_freq)
        k = apply_rope(k.reshape(t, hkv, d), positions, inv_freq)
        v = v.reshape(t, hkv, d)
        # The cache update comes first: attention reads this step's K/V from the pages.
        k_pages, v_pages = write_kv(k_pages, v_pages, k, v, attn_md.slot_mapping)
        new_cache.append((k_pages, v_pages))
        o = attend(q, k_pages, v_pages, attn_md, attention_impl)
        x = x + o.reshape(t, hq * d) @ layer["wo"]
        h = rms_norm(x, layer["mlp_norm"], cfg.rms_norm_eps)
        x = x + gated_mlp(h, layer)
    if logits_indices is not None:
        x = x[logits_indices]
    x = rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
    head = params["embed"].T if cfg.tie_word_embeddings else params["lm_head"]
    logits = jnp.dot(x, head, preferred_element_type=jnp.float32)
    return logits, new_cache
