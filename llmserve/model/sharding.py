"""Tensor parallelism: Megatron-style sharding rules over a 1-D `jax.sharding.Mesh` axis "tp".

q/k/v and gate/up are column-parallel (each device holds whole attention heads and a slice of
the MLP's columns); o_proj and down_proj are row-parallel, so each device's product is a
partial sum of the hidden state and XLA's partitioner inserts one all-reduce after each: two
per layer, nothing else (tests/model/test_tensor_parallel.py counts them in the compiled HLO).
The KV cache is split by kv head, the same contiguous head ranges as q/k/v, so with GQA each
device's query heads find their kv heads locally and attention needs no communication.

The embedding and norms stay replicated: a vocabulary-parallel lookup would cost a third
all-reduce per step, for a table that is a few percent of an 8B model. The LM head is
vocabulary-parallel when the vocabulary divides evenly (the sampled tokens are gathered once
per step), replicated otherwise (the tiny byte-level model's 259 entries).

The model code itself knows nothing of this: the runner jits its step with these shardings
as in/out shardings and jax's partitioner propagates them through the forward pass. Only the
paged attention is placed by hand (`head_parallel_attention`, a shard_map over heads): the
Pallas kernels are custom calls the partitioner cannot split, and would otherwise be run on
all-gathered inputs.
"""
from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from llmserve.model.config import ModelConfig
from llmserve.model.params import param_shapes

TP_AXIS = "tp"
_COLUMN = ("wq", "wk", "wv", "w_gate", "w_up")   # [H, out]: split the output columns
_ROW = ("wo", "w_down")                           # [in, H]: split the input rows
_BIAS = ("bq", "bk", "bv")                        # follow their column-parallel weights


def validate_tp(cfg: ModelConfig, tp: int, num_devices: int | None = None,
                field: str = "tensor_parallel_size") -> None:
    """ValueError naming `field` unless tp devices can split this model evenly."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ValueError(f"{field} must be a positive int, got {tp!r}")
    num_devices = jax.device_count() if num_devices is None else num_devices
    if tp > num_devices:
        raise ValueError(f"{field}={tp} exceeds the {num_devices} available "
                         f"{jax.default_backend()} device(s)")
    for name in ("num_kv_heads", "num_heads", "intermediate_size"):
        v = getattr(cfg, name)
        if v % tp:
            raise ValueError(f"{field}={tp} must divide the model's {name} ({v})")


def make_mesh(tp: int, devices=None) -> Mesh:
    devices = jax.devices()[:tp] if devices is None else devices
    return Mesh(np.asarray(devices), (TP_AXIS,))


def param_specs(cfg: ModelConfig, tp: int) -> dict:
    """PartitionSpec pytree with the structure of the params (see params.py for the layout)."""
    layer = {}
    for name in param_shapes(cfg)["layers"][0]:
        if name in _COLUMN:
            layer[name] = P(None, TP_AXIS)
        elif name in _ROW:
            layer[name] = P(TP_AXIS, None)
        elif name in _BIAS:
            layer[name] = P(TP_AXIS)
        else:
            layer[name] = P()
    specs = {"embed": P(), "layers": [dict(layer) for _ in range(cfg.num_layers)],
             "final_norm": P()}
    if not cfg.tie_word_embeddings:
        specs["lm_head"] = P(None, TP_AXIS) if cfg.vocab_size % tp == 0 else P()
    return specs


def _named(mesh: Mesh, specs):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, P))


def param_shardings(mesh: Mesh, cfg: ModelConfig) -> dict:
    return _named(mesh, param_specs(cfg, mesh.shape[TP_AXIS]))


def kv_cache_shardings(mesh: Mesh, cfg: ModelConfig) -> list:
    """Each layer's (k, v) pages [num_kv_heads, num_blocks, block_size, head_dim]: by kv head."""
    s = NamedSharding(mesh, P(TP_AXIS))
    return [(s, s) for _ in range(cfg.num_layers)]


def head_parallel_attention(mesh: Mesh):
    """paged_attention run by each device on its own query heads and kv-head pages (a GQA
    group never straddles devices, since tp divides num_kv_heads): no communication."""
    from llmserve.model.attention import paged_attention
    heads = P(None, TP_AXIS, None)

    def attend(q, k_pages, v_pages, md, impl):
        fn = functools.partial(paged_attention, impl=impl)
        return jax.shard_map(fn, mesh=mesh, in_specs=(heads, P(TP_AXIS), P(TP_AXIS), P()),
                             out_specs=heads, check_vma=False)(q, k_pages, v_pages, md)
    return attend


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_params(params: dict, mesh: Mesh, cfg: ModelConfig) -> dict:
    return jax.device_put(params, param_shardings(mesh, cfg))


def init_sharded_kv_cache(mesh: Mesh, cfg: ModelConfig, num_blocks: int, block_size: int,
                          dtype=None) -> list:
    """Zeros created already split: no device ever holds the whole cache."""
    from llmserve.model.kv_cache import init_kv_cache
    return jax.jit(lambda: init_kv_cache(cfg, num_blocks, block_size, dtype),
                   out_shardings=kv_cache_shardings(mesh, cfg))()


def jit_sharded_step(step_fn, mesh: Mesh, cfg: ModelConfig):
    """jit `step_fn(params, kv_cache, batch) -> (tokens, logprobs, kv_cache)` with explicit
    shardings: params and cache as above (the cache donated, so updated in place on each
    device), the host batch and the sampled tokens replicated."""
    rep = replicated(mesh)
    kv = kv_cache_shardings(mesh, cfg)
    return jax.jit(step_fn, donate_argnums=(1,),
                   in_shardings=(param_shardings(mesh, cfg), kv, rep),
                   out_shardings=(rep, rep, kv))
