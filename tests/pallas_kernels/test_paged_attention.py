"""paged_decode_attention (interpret mode on CPU) against the plain-jnp reference."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pk_testdata import assert_close, decode_case

from pallas_kernels import paged_attention as pa
from pallas_kernels import paged_decode_attention, paged_decode_attention_reference

F32, BF16 = jnp.float32, jnp.bfloat16


def _lengths(page_size, max_pages):
    """0, 1, page boundaries and a long sequence, all within max_pages pages."""
    top = max_pages * page_size
    return [0, 1, page_size - 1, page_size, page_size + 1, 2 * page_size, top - 1, top]


def _run(case, **kw):
    q, k, v, bt, sl = case
    fn = jax.jit(functools.partial(paged_decode_attention, interpret=True, **kw))
    return fn(q, k, v, bt, sl), paged_decode_attention_reference(q, k, v, bt, sl)


# (num_heads, num_kv_heads, head_dim, page_size, dtype): every group (1, 4, 8, and 7 for
# Qwen2), head dim, page size and dtype appears; the full product is the slow test below.
FAST_CONFIGS = [
    (4, 4, 64, 16, F32),      # group 1
    (8, 2, 128, 32, F32),     # group 4
    (16, 2, 64, 64, F32),     # group 8
    (14, 2, 64, 16, BF16),    # group 7 (Qwen2-0.5B), padded to 16 rows
    (32, 8, 128, 16, BF16),   # Llama-3-8B
    (8, 8, 128, 64, BF16),    # group 1, big pages
    (8, 1, 64, 32, BF16),     # group 8, one KV head
]


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,page_size,dtype", FAST_CONFIGS)
def test_matches_reference(num_heads, num_kv_heads, head_dim, page_size, dtype):
    rng = np.random.default_rng(num_heads * 1000 + head_dim + page_size)
    max_pages = max(4, 256 // page_size)          # long: up to 256 tokens
    lens = _lengths(page_size, max_pages)
    # pool large enough for every sequence's pages, pages shuffled inside it
    num_pages = sum(-(-n // page_size) for n in lens) + 4
    case = decode_case(rng, lens, num_heads=num_heads, num_kv_heads=num_kv_heads,
                       head_dim=head_dim, page_size=page_size, num_pages=num_pages,
                       max_pages=max_pages, dtype=dtype)
    out, ref = _run(case)
    assert out.shape == case[0].shape and out.dtype == dtype
    assert_close(out, ref, dtype, "default splits")
    out, _ = _run(case, num_splits=3)             # explicit flash-decoding splits
    assert_close(out, ref, dtype, "3 splits")


@pytest.mark.parametrize("num_splits", [1, 2, 7, 40])
def test_splits_including_more_splits_than_pages(num_splits):
    rng = np.random.default_rng(num_splits)
    # 4 pages of 16 per sequence at most; 40 splits > pages > tiles
    case = decode_case(rng, [0, 1, 17, 64, 33], num_heads=8, num_kv_heads=2, head_dim=64,
                       page_size=16, num_pages=32, max_pages=4)
    out, ref = _run(case, num_splits=num_splits, block_kv=16)
    assert_close(out, ref, F32, f"{num_splits} splits")


@pytest.mark.parametrize("block_kv", [16, 32, 64, 128])
def test_block_kv_variants(block_kv):
    rng = np.random.default_rng(block_kv)
    case = decode_case(rng, [5, 100, 128, 1], num_heads=8, num_kv_heads=2, head_dim=64,
                       page_size=16, num_pages=32, max_pages=8)
    out, ref = _run(case, block_kv=block_kv, num_splits=2)
    assert_close(out, ref, F32, f"block_kv {block_kv}")


@pytest.mark.parametrize("prefetch_rows", [True, False])
@pytest.mark.parametrize("page_size,dtype", [(16, F32), (32, BF16), (64, F32)])
def test_both_kv_loops(prefetch_rows, page_size, dtype):
    """The row-prefetching loop (default) and the first version's page-gather loop."""
    rng = np.random.default_rng(page_size)
    max_pages = max(2, 192 // page_size)
    lens = _lengths(page_size, max_pages)
    case = decode_case(rng, lens, num_heads=8, num_kv_heads=2, head_dim=64,
                       page_size=page_size, num_pages=sum(-(-n // page_size) for n in lens) + 3,
                       max_pages=max_pages, dtype=dtype)
    for splits in (1, 3):
        out, ref = _run(case, num_splits=splits, prefetch_rows=prefetch_rows)
        assert_close(out, ref, dtype, f"prefetch_rows={prefetch_rows}, {splits} splits")


def test_zero_length_gives_zeros_not_nan():
    rng = np.random.default_rng(0)
    case = decode_case(rng, [0, 0, 3], num_heads=8, num_kv_heads=2, head_dim=64,
                       page_size=16, num_pages=8, max_pages=2)
    for splits in (1, 4):
        out, _ = _run(case, num_splits=splits)
        assert np.all(np.asarray(out[:2]) == 0.0)
        assert np.all(np.isfinite(np.asarray(out)))


def test_sm_scale_and_traced_lengths():
    rng = np.random.default_rng(1)
    q, k, v, bt, _sl = decode_case(rng, [7, 40, 64], num_heads=8, num_kv_heads=2,
                                  head_dim=64, page_size=16, num_pages=16, max_pages=4)
    f = jax.jit(lambda q, k, v, bt, sl: paged_decode_attention(
        q, k, v, bt, sl, sm_scale=0.3, interpret=True))
    for lens in ([7, 40, 64], [64, 0, 1]):
        lens = jnp.asarray(lens, jnp.int32)
        ref = paged_decode_attention_reference(q, k, v, bt, lens, sm_scale=0.3)
        assert_close(f(q, k, v, bt, lens), ref, F32, f"lens {lens}")


def test_choose_num_splits():
    # B * Hkv fills two waves of SMs -> no split
    assert pa.choose_num_splits(64, 8, 8192, 128, sms=132) == 1
    # batch 1: split, but never below 512 tokens per split
    assert pa.choose_num_splits(1, 8, 8192, 128, sms=132) == 16
    assert pa.choose_num_splits(1, 8, 512, 128, sms=132) == 1
    assert pa.choose_num_splits(8, 8, 2048, 128, sms=132) == 4
    assert pa.padded_group(7) == 16 and pa.padded_group(32) == 32


def test_garbage_ids_past_length_are_ignored():
    """Entries past a sequence's length may hold any id, even out of the pool."""
    rng = np.random.default_rng(2)
    q, k, v, bt, sl = decode_case(rng, [20, 3], num_heads=4, num_kv_heads=4, head_dim=64,
                                  page_size=16, num_pages=8, max_pages=4)
    bad = bt.at[:, 2:].set(jnp.asarray([[-5, 1000], [77, -1]], jnp.int32))
    bad = bad.at[1, 1].set(12345)
    out = paged_decode_attention(q, k, v, bad, sl, interpret=True)
    assert_close(out, paged_decode_attention_reference(q, k, v, bt, sl), F32, "garbage ids")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("page_size", [16, 32, 64])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [1, 4, 7, 8])
def test_full_product(group, head_dim, page_size, dtype):
    rng = np.random.default_rng(group * 7 + head_dim + page_size)
    num_kv_heads = 2
    max_pages = max(2, 256 // page_size)
    lens = [0, 1, page_size, page_size + 1, int(rng.integers(2, max_pages * page_size)),
            max_pages * page_size]
    num_pages = sum(-(-n // page_size) for n in lens) + 2
    case = decode_case(rng, lens, num_heads=group * num_kv_heads, num_kv_heads=num_kv_heads,
                       head_dim=head_dim, page_size=page_size, num_pages=num_pages,
                       max_pages=max_pages, dtype=dtype)
    for splits in (1, 5):
        out, ref = _run(case, num_splits=splits)
        assert_close(out, ref, dtype, f"splits {splits}")


# ------------------------------------------------------------------ checked API errors


def _good(**over):
    a = {"q": jnp.zeros((2, 8, 64), F32), "k_pages": jnp.zeros((2, 4, 16, 64), F32),
             "v_pages": jnp.zeros((2, 4, 16, 64), F32),
             "block_tables": jnp.zeros((2, 3), jnp.int32),
             "seq_lens": jnp.zeros((2,), jnp.int32)}
    a.update(over)
    return a


@pytest.mark.parametrize("override,name,words", [
    ({"q": jnp.zeros((2, 8, 80), F32), "k_pages": jnp.zeros((2, 4, 16, 80), F32),
          "v_pages": jnp.zeros((2, 4, 16, 80), F32)}, "q", "head_dim"),
    ({"q": jnp.zeros((2, 8), F32)}, "q", "3-d"),
    ({"q": jnp.zeros((2, 8, 64), jnp.float16)}, "q", "float32 or bfloat16"),
    ({"k_pages": jnp.zeros((2, 4, 16, 64), BF16)}, "k_pages", "dtype"),
    ({"v_pages": jnp.zeros((2, 4, 16, 32), F32)}, "v_pages", "shape"),
    ({"k_pages": jnp.zeros((2, 4, 12, 64), F32), "v_pages": jnp.zeros((2, 4, 12, 64), F32)},
     "k_pages", "page_size"),
    ({"k_pages": jnp.zeros((3, 4, 16, 64), F32), "v_pages": jnp.zeros((3, 4, 16, 64), F32)},
     "q", "divisible"),
    ({"block_tables": jnp.zeros((3, 3), jnp.int32)}, "block_tables", "shape"),
    ({"block_tables": jnp.zeros((2, 3), jnp.int64 if jax.config.jax_enable_x64
                                 else jnp.float32)}, "block_tables", "int32"),
    ({"seq_lens": jnp.zeros((3,), jnp.int32)}, "seq_lens", "shape"),
    ({"seq_lens": jnp.zeros((2,), jnp.float32)}, "seq_lens", "int32"),
])
def test_bad_arguments_raise_value_error(override, name, words):
    with pytest.raises(ValueError, match=name) as e:
        paged_decode_attention(**_good(**override), interpret=True)
    assert words in str(e.value)


@pytest.mark.parametrize("kw,name", [({"block_kv": 24}, "block_kv"),
                                     ({"block_kv": 8}, "block_kv"),
                                     ({"num_splits": 0}, "num_splits"),
                                     ({"num_warps": 3}, "num_warps")])
def test_bad_tuning_arguments(kw, name):
    with pytest.raises(ValueError, match=name):
        paged_decode_attention(**_good(), interpret=True, **kw)
