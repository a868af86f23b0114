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

import functools

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
    """Random weights (load_format="dummy"): scaled normals, norms at one, biases small.

    One small jitted initialiser per distinct leaf shape: a single jit over every leaf of a
    32-layer model takes minutes to compile.
    """
    dtype = jnp.dtype(cfg.dtype)
    shapes = param_shapes(cfg)
    is_shape = lambda x: isinstance(x, tuple)
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=is_shape)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(flat))
    leaves = []
    for key, (path, shape) in zip(keys, flat):
        kind = "ones" if "norm" in jax.tree_util.keystr(path) else (
            "bias" if len(shape) == 1 else "weight")
        leaves.append(_init_leaf(key, shape, dtype, kind))
    return jax.tree.unflatten(treedef, leaves)


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "kind"))
def _init_leaf(key, shape, dtype, kind):
    if kind == "ones":
        return jnp.ones(shape, dtype)
    std = 0.02 if kind == "bias" else 1.0 / (shape[0] ** 0.5)
    return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
