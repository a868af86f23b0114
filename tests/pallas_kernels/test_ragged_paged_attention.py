"""ragged_paged_attention (interpret mode on CPU) against the plain-jnp reference."""
from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pk_testdata import assert_close, ragged_case

from pallas_kernels import (
    paged_decode_attention_reference,
    ragged_paged_attention,
    ragged_paged_attention_reference,
)

F32, BF16 = jnp.float32, jnp.bfloat16
# the module (the package attribute of the same name is the function)
rpa_mod = importlib.import_module("pallas_kernels.ragged_paged_attention")

_kernel = jax.jit(functools.partial(ragged_paged_attention, interpret=True),
                  static_argnames=("block_q_rows", "block_kv", "prefetch_rows", "fused"))


def _check(args, dtype, what="", **kw):
    out = _kernel(*args, **kw)
    ref = ragged_paged_attention_reference(*args)
    assert out.shape == args[0].shape and out.dtype == dtype
    assert_close(out, ref, dtype, what)
    # rows past query_start_loc[num_seqs] are padding: zeros
    end = int(args[5][int(args[6])])
    assert np.all(np.asarray(out[end:], np.float32) == 0.0), "padding rows not zero"
    return out


# A mixed batch: decode tokens (q_len 1), a chunk with a cached prefix, a whole prompt,
# a chunk ending on a page boundary, q_len = 4/5 (the small/large tile class boundary for
# group 4), a long-context decode, and an empty sequence in the middle.
MIXED = {"q_lens": [1, 21, 0, 16, 1, 4, 5, 1],
             "ctx_lens": [1, 40, 0, 16, 17, 32, 9, 200]}

FAST_CONFIGS = [
    (4, 4, 64, 16, F32),      # group 1
    (8, 2, 128, 32, F32),     # group 4
    (16, 2, 64, 64, F32),     # group 8
    (14, 2, 64, 16, BF16),    # group 7 (Qwen2-0.5B), padded to 8
    (32, 8, 128, 16, BF16),   # Llama-3-8B
    (8, 8, 128, 64, BF16),    # group 1, big pages
]


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,page_size,dtype", FAST_CONFIGS)
def test_mixed_batch_matches_reference(num_heads, num_kv_heads, head_dim, page_size, dtype):
    rng = np.random.default_rng(num_heads * 100 + head_dim + page_size)
    args = ragged_case(rng, **MIXED, num_heads=num_heads, num_kv_heads=num_kv_heads,
                       head_dim=head_dim, page_size=page_size, num_tokens=64, num_slots=12,
                       num_pages=64, max_pages=max(16, 256 // page_size), dtype=dtype)
    _check(args, dtype, "mixed")


def test_pure_decode_batch_equals_decode_reference():
    rng = np.random.default_rng(3)
    ctx = [1, 15, 16, 17, 64, 0, 100, 33]
    args = ragged_case(rng, [1 if c else 0 for c in ctx], ctx, num_heads=8, num_kv_heads=2,
                       head_dim=64, page_size=16, num_tokens=16, num_slots=8, max_pages=8)
    q, k, v, bt, sl, qsl, _n = args
    out = _check(args, F32, "decode")
    # the same rows through the decode oracle (rows of non-empty sequences)
    rows = np.asarray(qsl[:-1])[np.asarray(ctx) > 0]
    dec_q = q[rows]
    dec = paged_decode_attention_reference(dec_q, k, v, bt[np.asarray(ctx) > 0],
                                           sl[np.asarray(ctx) > 0])
    assert_close(out[rows], dec, F32, "vs decode reference")


def test_single_long_prefill_chunk_many_tiles():
    rng = np.random.default_rng(4)
    # 150-row chunk at the end of a 300-token context: > 2 large tiles, mask + no-mask loops
    args = ragged_case(rng, [150], [300], num_heads=8, num_kv_heads=2, head_dim=64,
                       page_size=32, num_tokens=160, num_slots=2, max_pages=16)
    _check(args, F32, "long chunk")
    _check(args, F32, "long chunk, block_kv 32, 16-row tiles", block_q_rows=16, block_kv=32)
    _check(args, F32, "long chunk, block_kv 128", block_q_rows=32, block_kv=128)


@pytest.mark.parametrize("prefetch_rows,fused", [(True, True), (False, True), (False, False)])
@pytest.mark.parametrize("page_size,dtype", [(16, BF16), (32, F32)])
def test_loop_and_launch_variants(prefetch_rows, fused, page_size, dtype):
    """Both KV loops, with the two tile classes in one launch (fused) or one each."""
    rng = np.random.default_rng(page_size + 7)
    # decode rows, a long chunk (several prefill tiles, mask + no-mask loops), an empty slot
    q_lens, ctx = [1, 70, 1, 0, 5], [130, 200, 1, 0, 5]
    args = ragged_case(rng, q_lens, ctx, num_heads=8, num_kv_heads=2, head_dim=64,
                       page_size=page_size, num_tokens=96, num_slots=6,
                       max_pages=-(-200 // page_size) + 1, dtype=dtype)
    _check(args, dtype, f"prefetch_rows={prefetch_rows} fused={fused}",
           prefetch_rows=prefetch_rows, fused=fused)


def test_whole_prompts_no_prefix():
    rng = np.random.default_rng(5)
    args = ragged_case(rng, [33, 7, 64], [33, 7, 64], num_heads=4, num_kv_heads=1,
                       head_dim=64, page_size=16, num_tokens=112, num_slots=4, max_pages=4)
    _check(args, F32, "prompts")


def test_padding_rows_and_slots_and_traced_num_seqs():
    rng = np.random.default_rng(6)
    q, k, v, bt, sl, qsl, n = ragged_case(
        rng, [3, 1, 10], [10, 5, 10], num_heads=8, num_kv_heads=2, head_dim=64,
        page_size=16, num_tokens=32, num_slots=6, max_pages=2)
    f = jax.jit(lambda n: ragged_paged_attention(q, k, v, bt, sl, qsl, n, interpret=True))
    assert_close(f(n), ragged_paged_attention_reference(q, k, v, bt, sl, qsl, n), F32)
    # fewer real sequences at run time: the rest must be zeros
    n2 = jnp.asarray(2, jnp.int32)
    sl2 = sl.at[2].set(0)
    qsl2 = qsl.at[3:].set(qsl[2])
    out = ragged_paged_attention(q, k, v, bt, sl2, qsl2, n2, interpret=True)
    assert_close(out, ragged_paged_attention_reference(q, k, v, bt, sl2, qsl2, n2), F32)
    assert np.all(np.asarray(out[4:]) == 0.0)


def test_zero_sequences():
    rng = np.random.default_rng(7)
    args = ragged_case(rng, [], [], num_heads=4, num_kv_heads=2, head_dim=64, page_size=16,
                       num_tokens=16, num_slots=4, max_pages=2)
    out = _check(args, F32, "empty")
    assert np.all(np.asarray(out) == 0.0)


@pytest.mark.parametrize("num_tokens", [47, 8])   # 8 < 9 slots: the decode class searches
def test_query_tiles_cover_every_row_once(num_tokens):
    qsl = jnp.asarray([0, 1, 21, 21, 37, 38, 42, 47, 47, 47], jnp.int32)
    lens = jnp.asarray([1, 40, 0, 16, 17, 32, 9, 0, 0], jnp.int32)
    if num_tokens == 8:   # 1-token sequences only, and empty ones
        qsl = jnp.asarray([0, 1, 2, 2, 3, 4, 5, 6, 6, 6], jnp.int32)
        lens = jnp.asarray([1, 40, 0, 16, 17, 32, 9, 0, 0], jnp.int32)
    covered = np.zeros(int(qsl[7]), np.int32)
    for block_q, lo, hi, n in rpa_mod.tile_plan(num_tokens, 9, 4, 64):
        meta = np.asarray(rpa_mod.query_tiles(qsl, lens, jnp.int32(7), block_q=block_q,
                                              min_q_len=lo, max_q_len=hi, num_tiles=n))
        for seq, start, nrows, pos0 in meta.T:
            if nrows:
                assert nrows <= block_q
                covered[start:start + nrows] += 1
                q_len = int(qsl[seq + 1] - qsl[seq])
                assert pos0 == int(lens[seq]) - q_len + (start - int(qsl[seq]))
    assert np.all(covered == 1)


def test_plan_sizes_are_bounded():
    # T=512, S=256, group 4: 16-row decode tiles for up to S sequences, 64-row tiles else
    plan = rpa_mod.tile_plan(512, 256, 4, 64)
    assert plan[0] == (4, 1, 4, 256)
    assert plan[1][0] == 16 and plan[1][3] <= 512 // 16 + 512 // 5
    assert rpa_mod.tile_plan(16, 4, 1, 64) == [(16, 1, 16, 4)]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("page_size", [16, 32, 64])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [1, 4, 7, 8])
def test_full_product(group, head_dim, page_size, dtype):
    rng = np.random.default_rng(group * 11 + head_dim + page_size)
    q_lens = [int(x) for x in rng.integers(0, 20, 5)] + [1, 1]
    ctx = [ql + int(rng.integers(0, 120)) for ql in q_lens]
    args = ragged_case(rng, q_lens, ctx, num_heads=2 * group, num_kv_heads=2,
                       head_dim=head_dim, page_size=page_size,
                       num_tokens=-(-sum(q_lens) // 16) * 16 + 16, num_slots=8,
                       num_pages=64, max_pages=max(4, 160 // page_size), dtype=dtype)
    _check(args, dtype, "product")


# ------------------------------------------------------------------ checked API errors


def _good(**over):
    a = {"q": jnp.zeros((16, 8, 64), F32), "k_pages": jnp.zeros((2, 4, 16, 64), F32),
             "v_pages": jnp.zeros((2, 4, 16, 64), F32),
             "block_tables": jnp.zeros((3, 2), jnp.int32),
             "seq_lens": jnp.zeros((3,), jnp.int32), "query_start_loc": jnp.zeros((4,), jnp.int32),
             "num_seqs": jnp.asarray(0, jnp.int32)}
    a.update(over)
    return a


@pytest.mark.parametrize("override,name,words", [
    ({"q": jnp.zeros((16, 8, 80), F32), "k_pages": jnp.zeros((2, 4, 16, 80), F32),
          "v_pages": jnp.zeros((2, 4, 16, 80), F32)}, "q", "head_dim"),
    ({"q": jnp.zeros((16, 8, 64, 1), F32)}, "q", "3-d"),
    ({"v_pages": jnp.zeros((2, 4, 16, 64), BF16)}, "v_pages", "dtype"),
    ({"block_tables": jnp.zeros((3,), jnp.int32)}, "block_tables", "shape"),
    ({"seq_lens": jnp.zeros((4,), jnp.int32)}, "seq_lens", "shape"),
    ({"query_start_loc": jnp.zeros((3,), jnp.int32)}, "query_start_loc", "(4,)"),
    ({"query_start_loc": jnp.zeros((4,), jnp.float32)}, "query_start_loc", "int32"),
    ({"num_seqs": jnp.zeros((2,), jnp.int32)}, "num_seqs", "scalar"),
])
def test_bad_arguments_raise_value_error(override, name, words):
    with pytest.raises(ValueError, match=name) as e:
        ragged_paged_attention(**_good(**override), interpret=True)
    assert words in str(e.value)


@pytest.mark.parametrize("kw,name", [({"block_q_rows": 24}, "block_q_rows"),
                                     ({"block_kv": 8}, "block_kv"),
                                     ({"num_stages": 0}, "num_stages")])
def test_bad_tuning_arguments(kw, name):
    with pytest.raises(ValueError, match=name):
        ragged_paged_attention(**_good(), interpret=True, **kw)


def test_garbage_table_entries_past_length_are_ignored():
    rng = np.random.default_rng(8)
    args = ragged_case(rng, [5, 1], [20, 3], num_heads=8, num_kv_heads=2, head_dim=64,
                       page_size=16, num_tokens=16, num_slots=3, max_pages=3)
    bt = args[3]
    bad = bt.at[0, 2].set(-7).at[1, 1:].set(jnp.asarray([999, -1], jnp.int32))
    bad = bad.at[2].set(jnp.asarray([5000, -3, 7], jnp.int32))
    out = ragged_paged_attention(*args[:3], bad, *args[4:], interpret=True)
    assert_close(out, ragged_paged_attention_reference(*args), F32, "garbage ids")
