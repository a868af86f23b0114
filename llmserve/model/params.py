"""The parameter pytree: its shapes, and random ("dummy") initialisation.

Layout (weights stored [in, out] so a projection is `x @ w`):
  {"embed": [V, H],
   "layers": [ {"attn_norm": [H], "wq": [H, Hq*D], "wk": [H, Hkv*D], "wv": [H, Hkv*D],
                "bq"/"bk"/"bv" (only if attention_bias), "wo": [Hq*D, H],
                "mlp_norm": [H], "w_gate": [H, I], "w_up": [H, I], "w_down": [I, H]}, ... ],
   "final_norm": [H],
   "lm_head": [H, V]  (absent when tie_word_embeddings)}
Layers are a list, not a stacked array, so each layer's KV cache buffer is updated in place.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from llmserve.model.config import ModelConfig


def param_shapes(cfg: ModelConfig) -> dict:
    """Nested dict of shape tuples with the same structure as the params."""
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    layer = {
        "attn_norm": (h,), "wq": (h, cfg.q_size), "wk": (h, cfg.kv_size),
        "wv": (h, cfg.kv_size), "wo": (cfg.q_size, h),
        "mlp_norm": (h,), "w_gate": (h, i), "w_up": (h, i), "w_down": (i, h),
    }
    if cfg.attention_bias:
        layer.update(bq=(cfg.q_size,), bk=(cfg.kv_size,), bv=(cfg.kv_size,))
    shapes = {"embed": (v, h), "layers": [dict(layer) for _ in range(cfg.num_layers)],
              "final_norm": (h,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head"] = (h, v)
    return shapes


def abstract_params(cfg: ModelConfig) -> dict:
    dtype = jnp.dtype(cfg.dtype)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, dtype), param_shapes(cfg),
                        is_leaf=lambda x: isinstance(x, tuple))


def init_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Random weights (load_format="dummy"): scaled normals, norms at one, biases small."""
    dtype = jnp.dtype(cfg.dtype)
    shapes = param_shapes(cfg)
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    paths = [jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))[0]]
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))

    @jax.jit
    def _init(keys):
        out = []
        for key, shape, path in zip(keys, leaves, paths):
            if "norm" in path:
                out.append(jnp.ones(shape, dtype))
            elif len(shape) == 1:  # biases
                out.append((0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype))
            else:
                std = 1.0 / (shape[0] ** 0.5)
                out.append((std * jax.random.normal(key, shape, jnp.float32)).astype(dtype))
        return out

    return jax.tree.unflatten(treedef, _init(keys))
