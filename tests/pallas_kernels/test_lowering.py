"""Every production configuration lowers for CUDA on this CPU-only machine.

Lowering (jax.jit(f).trace(...).lower(lowering_platforms=("cuda",)) under an abstract CUDA
mesh) runs the Pallas Triton lowering, which rejects what a GPU would reject at compile
time: non-power-of-two blocks, unsupported primitives, dtype mismatches in dots. It does not
check Triton compiler limits (shared memory, registers): only the GPU run does.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels import (
    _compat,
    paged_decode_attention,
    ragged_paged_attention,
    tuning,
)

S = jax.ShapeDtypeStruct
I32 = jnp.int32

# name: (num_heads, num_kv_heads, head_dim)
PRODUCTION = {
    "llama3-8b": (32, 8, 128),
    "llama2-7b": (32, 32, 128),
    "qwen2-0.5b": (14, 2, 64),   # group 7
}


def _decode_specs(batch, num_heads, num_kv_heads, head_dim, page_size, max_pages, num_pages,
                  dtype=jnp.bfloat16):
    return (S((batch, num_heads, head_dim), dtype),
            S((num_kv_heads, num_pages, page_size, head_dim), dtype),
            S((num_kv_heads, num_pages, page_size, head_dim), dtype),
            S((batch, max_pages), I32), S((batch,), I32))


def _ragged_specs(num_tokens, num_slots, num_heads, num_kv_heads, head_dim, page_size,
                  max_pages, num_pages, dtype=jnp.bfloat16):
    return (S((num_tokens, num_heads, head_dim), dtype),
            S((num_kv_heads, num_pages, page_size, head_dim), dtype),
            S((num_kv_heads, num_pages, page_size, head_dim), dtype),
            S((num_slots, max_pages), I32), S((num_slots,), I32), S((num_slots + 1,), I32),
            S((), I32))


def _assert_triton(text, count=1):
    assert text.count(_compat.TRITON_CUSTOM_CALL) >= count, "no Triton custom call lowered"


@pytest.mark.parametrize("model", sorted(PRODUCTION))
@pytest.mark.parametrize("page_size", [16, 32, 64])
def test_decode_lowers_for_cuda(model, page_size):
    hq, hkv, d = PRODUCTION[model]
    # decode buckets: batch 1 (splits) .. 256 (no split), 8k context, a big pool
    for batch, max_pages in ((1, 8192 // page_size), (256, 2048 // page_size)):
        text = _compat.lower_for_cuda(
            paged_decode_attention,
            *_decode_specs(batch, hq, hkv, d, page_size, max_pages, num_pages=16384))
        _assert_triton(text)


@pytest.mark.parametrize("model", sorted(PRODUCTION))
@pytest.mark.parametrize("page_size", [16, 64])
def test_ragged_lowers_for_cuda(model, page_size):
    hq, hkv, d = PRODUCTION[model]
    for num_tokens, num_slots in ((16, 4), (512, 256)):
        text = _compat.lower_for_cuda(
            ragged_paged_attention,
            *_ragged_specs(num_tokens, num_slots, hq, hkv, d, page_size,
                           max_pages=4096 // page_size, num_pages=16384))
        _assert_triton(text)


def test_float32_lowers_for_cuda():
    text = _compat.lower_for_cuda(
        paged_decode_attention, *_decode_specs(8, 32, 8, 128, 16, 64, 1024, jnp.float32))
    _assert_triton(text)
    text = _compat.lower_for_cuda(
        ragged_paged_attention,
        *_ragged_specs(64, 8, 32, 8, 128, 16, 64, 1024, jnp.float32))
    _assert_triton(text, 2)


@pytest.mark.parametrize("cfg", tuning.DECODE_SWEEP, ids=tuning.config_name)
def test_every_decode_sweep_config_lowers(cfg):
    """The GPU check's autotuning sweep must not die on a lowering error."""
    fn = functools.partial(paged_decode_attention, **cfg)
    text = _compat.lower_for_cuda(fn, *_decode_specs(8, 32, 8, 128, 16, 256, 4096))
    _assert_triton(text)


@pytest.mark.parametrize("cfg", tuning.RAGGED_SWEEP, ids=tuning.config_name)
def test_every_ragged_sweep_config_lowers(cfg):
    fn = functools.partial(ragged_paged_attention, **cfg)
    text = _compat.lower_for_cuda(fn, *_ragged_specs(512, 64, 32, 8, 128, 16, 256, 4096))
    _assert_triton(text, 1 if cfg.get("fused") else 2)   # fused: both tile classes, 1 launch


@pytest.mark.parametrize("fused", [False, True])
def test_ragged_glue_has_no_while_loop(fused):
    """The XLA ops around the ragged kernels hold no while loop: on a GPU each iteration of
    one is a launch plus a host read of its predicate (a binary-search searchsorted made
    two such loops, and the pure-decode batch cost 3.8x the decode kernel on the H200)."""
    fn = functools.partial(ragged_paged_attention, fused=fused)
    text = _compat.lower_for_cuda(fn, *_ragged_specs(640, 64, 32, 8, 128, 16, 128, 8192))
    assert "stablehlo.while" not in text


@pytest.mark.parametrize("fn,specs", [
    (paged_decode_attention, _decode_specs(4, 32, 8, 80, 16, 8, 64)),
    (ragged_paged_attention, _ragged_specs(16, 4, 32, 8, 80, 16, 8, 64)),
])
def test_head_dim_80_rejected_before_any_gpu(fn, specs):
    """Interpret mode would happily run D=80; a GPU would not. The API says so first."""
    with pytest.raises(ValueError, match=r"q: expected head_dim .* in \(64, 128\), got 80"):
        _compat.lower_for_cuda(fn, *specs)


def test_page_size_12_rejected():
    with pytest.raises(ValueError, match="k_pages: expected page_size"):
        _compat.lower_for_cuda(paged_decode_attention, *_decode_specs(4, 8, 2, 64, 12, 8, 64))


def _stack_hlo(share_metadata: bool, num_layers: int = 3) -> str:
    """Optimised CPU HLO of num_layers chained ragged calls (interpret mode), each layer with
    its own K/V pools; the layers share one step's metadata or get their own."""
    num_kv, pages, ps, d = 2, 16, 16, 64
    k = jnp.ones((num_kv, pages, ps, d), jnp.float32)

    def stack(q, bt, lens, qsl, n):
        for layer in range(num_layers):
            # per-layer metadata: the first sequence's chunk `own` rows shorter
            own = 0 if share_metadata else layer
            layer_qsl = qsl - jnp.array([0, own, own, own, 0], I32)
            q = ragged_paged_attention(q, k * (layer + 1), k - layer, bt, lens, layer_qsl, n,
                                       interpret=True)
        return q

    args = (jnp.ones((32, 8, d)), jnp.zeros((4, 4), I32), jnp.full((4,), 40, I32),
            jnp.array([0, 24, 25, 26, 27], I32), jnp.asarray(4, I32))
    return jax.jit(stack).lower(*args).compile().as_text()


def test_layers_share_one_set_of_tile_lists():
    """Chained calls with the same metadata (the engine's unrolled layers) keep one copy of
    the tile lists after XLA's CSE; with per-layer metadata there are about three, so the
    count does see copies. The ops are found by their jax.named_scope, "ragged_tile_lists"."""
    def count(text):
        return sum(1 for line in text.splitlines()
                   if " = " in line and "ragged_tile_lists" in line)
    shared, own = count(_stack_hlo(share_metadata=True)), count(_stack_hlo(share_metadata=False))
    assert shared > 0
    assert own > 2 * shared      # about 3x: fusion may duplicate a few cheap ops either way
