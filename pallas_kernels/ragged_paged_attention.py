"""Ragged paged attention: a flat batch of prefill chunks and decode tokens over paged KV.

Layout shared with the model's cache: k_pages, v_pages [num_kv_heads, num_pages, page_size,
head_dim]. Sequence i owns query rows q[query_start_loc[i]:query_start_loc[i+1]], which sit
at the last positions of its seq_lens[i] context tokens (their K/V already in the pages) and
attend causally. Rows beyond query_start_loc[num_seqs] are padding and come back as zeros.

Four parts: the kernel (`_ragged_kernel`), the pallas_call wrapper (`_ragged_pallas`, with
the tile list built in jnp by `query_tiles`), the checked public API
(`ragged_paged_attention`) and the plain-jnp oracle (`ragged_paged_attention_reference`).

Design. The wrapper cuts every sequence's query rows into tiles of at most BQ consecutive
rows of ONE sequence (a static-size list, unused entries empty). One program per (tile, KV
head) holds the tile's BQ rows x all Gq query heads of that KV head ([BQ * Gq, D], Gq = the
group padded to a power of two) and walks the sequence's pages from 0 to the causal limit of
the tile's last row: first the KV tiles every row sees (no mask), then the diagonal ones
(causal mask). Two tile classes run as two pallas_calls writing disjoint rows of one
buffer: short query ranges (decode tokens, q_len <= BQs with BQs * Gq = 16 rows) and long
ones (prefill chunks, BQ * Gq = `block_q_rows` rows), so a decode token costs a 16-row tile
rather than a prefill-sized one. There is no split along the KV length here: for batches of
pure decode tokens, `paged_decode_attention` (flash-decoding splits) is the faster route.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels import _compat
from pallas_kernels._compat import pl
from pallas_kernels.paged_attention import (
    LOG2E,
    MASK_VALUE,
    _check,
    _check_int_vector,
    _next_pow2,
    check_kv_pages,
    kv_tile_pages,
    kv_tile_rows,
    masked_softmax,
    pool_operand,
    online_softmax_update,
)

DEFAULT_BLOCK_Q_ROWS = 64   # rows (query tokens x padded group) of a prefill tile
SMALL_TILE_ROWS = 16        # rows of a decode tile: the tensor-core dot minimum


def default_block_kv_ragged(page_size: int, dtype) -> int:
    block = 64
    return max(block, page_size)


# ----------------------------------------------------------------------------- kernel


def _ragged_tile(j, meta_ref, bt_ref, q_ref, k_ref, v_ref, o_ref, *, block_q, group_rows,
                 page_size, pages_per_tile, scale_log2, precision, prefetch_rows):
    """Query tile j of one KV head's program (the head is selected by the BlockSpecs).

    meta_ref [4, N]: per tile (seq id, first row, number of rows, position of first row);
    bt_ref [S, max_pages] (ids clamped into the pool here); q_ref [T, Gq, D] (KV head h's
    query heads); k_ref, v_ref KV head h's pool, [num_pages * page_size, D] when
    prefetch_rows (the next KV tile's row ids are gathered one iteration ahead, as in the
    decode kernel, so Triton pipelines the K/V loads num_stages - 1 deep) else
    [num_pages, page_size, D]; o_ref [T, Gq, D] (aliased with o_in_ref when chaining):
    only the tile's rows are written.
    """
    seq = meta_ref[0, j]
    row_start = meta_ref[1, j]
    nrows = meta_ref[2, j]
    pos0 = meta_ref[3, j]
    block_kv = pages_per_tile * page_size
    head_dim = q_ref.shape[-1]
    rows = block_q * group_rows
    max_pages = bt_ref.shape[1]
    num_pages = k_ref.shape[0] // page_size if prefetch_rows else k_ref.shape[0]

    row_ok = lax.broadcasted_iota(jnp.int32, (block_q,), 0) < nrows
    q = _compat.load(q_ref.at[pl.ds(row_start, block_q)], mask=row_ok[:, None, None],
                     other=0.0)
    q = q.reshape(rows, head_dim)
    # Causal limits: keys <= pos0 are seen by every row; the last row sees keys < kv_end.
    kv_end = pos0 + nrows
    n_full = jnp.maximum(pos0 + 1, 0) // block_kv
    n_all = jnp.maximum(kv_end + block_kv - 1, 0) // block_kv
    row_pos = pos0 + lax.broadcasted_iota(jnp.int32, (rows, block_kv), 0) // group_rows

    tok = lax.broadcasted_iota(jnp.int32, (block_kv,), 0)
    tile_rows = functools.partial(kv_tile_rows, bt_ref, tok=tok, page_size=page_size,
                                  max_pages=max_pages, num_pages=num_pages, seq=seq)

    def attend(t, k, v, carry, masked):
        s = lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=precision,
                            preferred_element_type=jnp.float32) * scale_log2
        if masked:
            kpos = t * block_kv + lax.broadcasted_iota(jnp.int32, (rows, block_kv), 1)
            s = jnp.where(kpos <= row_pos, s, MASK_VALUE)
        return online_softmax_update(s, v, carry, precision)

    def step_prefetch(t, carry, masked):
        *carry, kv_rows = carry
        next_rows = tile_rows(t + 1)
        return (*attend(t, k_ref[kv_rows], v_ref[kv_rows], carry, masked), next_rows)

    def step_pages(t, carry, masked):
        k, v = kv_tile_pages(bt_ref, k_ref, v_ref, t, page_size=page_size, block_kv=block_kv,
                             max_pages=max_pages, num_pages=num_pages, seq=seq)
        return attend(t, k, v, carry, masked)

    step = step_prefetch if prefetch_rows else step_pages
    carry = (jnp.zeros((rows, head_dim), jnp.float32),
             jnp.full((rows,), MASK_VALUE, jnp.float32),
             jnp.zeros((rows,), jnp.float32))
    if prefetch_rows:
        carry = (*carry, tile_rows(0))
    # The row ids the first loop carries out are those of tile n_full: the second's first.
    carry = lax.fori_loop(0, n_full, functools.partial(step, masked=False), carry)
    acc, _, l = lax.fori_loop(n_full, n_all, functools.partial(step, masked=True), carry)[:3]
    safe_l = jnp.where(l > 0.0, l, 1.0)
    o = jnp.where(l[:, None] > 0.0, acc / safe_l[:, None], 0.0).astype(o_ref.dtype)
    _compat.store(o_ref.at[pl.ds(row_start, block_q)],
                  o.reshape(block_q, group_rows, head_dim), mask=row_ok[:, None, None])


def _ragged_kernel(meta_ref, bt_ref, q_ref, k_ref, v_ref, o_in_ref, o_ref, **kw):
    """One (query tile j, KV head h) program of one tile class."""
    del o_in_ref  # aliased with o_ref: rows other tiles wrote stay as they are
    _ragged_tile(pl.program_id(0), meta_ref, bt_ref, q_ref, k_ref, v_ref, o_ref, **kw)


def _ragged_fused_kernel(meta_ref, bt_ref, q_ref, k_ref, v_ref, o_in_ref, o_ref, *, n_first,
                         block_qs, **kw):
    """Both tile classes in one launch: tiles j < n_first have block_qs[0] query rows
    (the prefill tiles, first so the long programs start first), the rest block_qs[1].
    One launch lets the prefill tiles' arithmetic overlap the decode tiles' KV streaming,
    which two launches in a row cannot."""
    del o_in_ref
    j = pl.program_id(0)

    @pl.when(j < n_first)
    def _():
        _ragged_tile(j, meta_ref, bt_ref, q_ref, k_ref, v_ref, o_ref, block_q=block_qs[0],
                     **kw)

    @pl.when(j >= n_first)
    def _():
        _ragged_tile(j, meta_ref, bt_ref, q_ref, k_ref, v_ref, o_ref, block_q=block_qs[1],
                     **kw)


# ----------------------------------------------------------------------------- pallas_call


def query_tiles(query_start_loc, seq_lens, num_seqs, *, block_q, min_q_len, max_q_len,
                num_tiles):
    """Static-size tile list [4, num_tiles] int32 for sequences with min <= q_len <= max.

    Rows: sequence id, first query row, number of rows (0 = unused entry), absolute
    position of the first row. A sequence with q_len rows gets cdiv(q_len, block_q) tiles,
    in sequence order (or, when each sequence has at most one, at the sequence's index).
    """
    num_slots = seq_lens.shape[0]
    q_lens = query_start_loc[1:num_slots + 1] - query_start_loc[:num_slots]
    real = jnp.arange(num_slots, dtype=jnp.int32) < num_seqs
    in_class = real & (q_lens >= min_q_len) & (q_lens <= max_q_len)
    q_lens = jnp.where(in_class, q_lens, 0)
    if max_q_len <= block_q and num_tiles == num_slots:
        # One tile per sequence at most: tile j is sequence j, no search (the decode-token
        # class, where this glue is elementwise work XLA fuses into one kernel).
        return jnp.stack([
            jnp.arange(num_slots, dtype=jnp.int32),
            query_start_loc[:num_slots],
            q_lens,
            jnp.where(in_class, seq_lens - q_lens, -1),
        ]).astype(jnp.int32)
    per_seq = (q_lens + block_q - 1) // block_q
    cum = jnp.cumsum(per_seq)
    first = cum - per_seq
    j = jnp.arange(num_tiles, dtype=jnp.int32)
    # compare_all: one [num_tiles, num_slots] comparison. The default binary search is a
    # while loop, which on a GPU runs as a loop of tiny launches, each iteration's predicate
    # read back by the host: that glue, not the kernel, can dominate a ~100 us call.
    seq = jnp.searchsorted(cum, j, side="right", method="compare_all")
    seq = jnp.minimum(seq, num_slots - 1).astype(jnp.int32)
    local = j - first[seq]
    valid = j < cum[-1]
    row_start = query_start_loc[seq] + local * block_q
    nrows = jnp.clip(query_start_loc[seq + 1] - row_start, 0, block_q)
    pos0 = seq_lens[seq] - q_lens[seq] + local * block_q
    return jnp.stack([
        jnp.where(valid, seq, 0),
        jnp.where(valid, row_start, 0),
        jnp.where(valid, nrows, 0),
        jnp.where(valid, pos0, -1),
    ]).astype(jnp.int32)


def _ragged_call(classes, bt, qg, k_pages, v_pages, out, *, block_kv, scale_log2,
                 num_warps, num_stages, prefetch_rows, interpret):
    """One launch over the tiles of one class [(block_q, meta)] or of two (fused)."""
    num_tokens, num_kv_heads, group_rows, head_dim = qg.shape
    page_size = k_pages.shape[2]
    precision = lax.Precision.HIGHEST if qg.dtype == jnp.float32 else None
    common = dict(group_rows=group_rows, page_size=page_size,
                  pages_per_tile=block_kv // page_size, scale_log2=scale_log2,
                  precision=precision, prefetch_rows=prefetch_rows)
    if len(classes) == 1:
        (block_q, meta), = classes
        kernel = functools.partial(_ragged_kernel, block_q=block_q, **common)
        name = f"ragged_paged_attention_bq{block_q}_bkv{block_kv}"
    else:
        (bq0, meta0), (bq1, meta1) = classes
        meta = jnp.concatenate([meta0, meta1], axis=1)
        kernel = functools.partial(_ragged_fused_kernel, n_first=meta0.shape[1],
                                   block_qs=(bq0, bq1), **common)
        name = f"ragged_paged_attention_fused_bq{bq0}_{bq1}_bkv{block_kv}"
    num_tiles = meta.shape[1]
    k_pool, pool_spec = pool_operand(k_pages, prefetch_rows, lambda j, h: h)
    v_pool, _ = pool_operand(v_pages, prefetch_rows, lambda j, h: h)
    return pl.pallas_call(
        kernel,
        grid=(num_tiles, num_kv_heads),
        in_specs=[
            pl.BlockSpec(meta.shape, lambda j, h: (0, 0)),
            pl.BlockSpec(bt.shape, lambda j, h: (0, 0)),
            pl.BlockSpec((num_tokens, None, group_rows, head_dim), lambda j, h: (0, h, 0, 0)),
            pool_spec,
            pool_spec,
            pl.BlockSpec((num_tokens, None, group_rows, head_dim), lambda j, h: (0, h, 0, 0)),
        ],
        out_specs=pl.BlockSpec((num_tokens, None, group_rows, head_dim),
                               lambda j, h: (0, h, 0, 0)),
        out_shape=jax.ShapeDtypeStruct(qg.shape, qg.dtype),
        input_output_aliases={5: 0},
        compiler_params=_compat.compiler_params(num_warps, num_stages),
        interpret=interpret,
        name=name,
    )(meta, bt, qg, k_pool, v_pool, out)


def tile_plan(num_tokens: int, num_slots: int, group: int, block_q_rows: int):
    """Static plan: [(block_q, min_q_len, max_q_len, num_tiles), ...] for the two classes."""
    group_rows = _next_pow2(group)
    bq_small = max(1, SMALL_TILE_ROWS // group_rows)
    bq_large = max(bq_small, block_q_rows // group_rows)
    plan = [(bq_small, 1, bq_small, min(num_slots, num_tokens))]
    max_long_seqs = min(num_slots, num_tokens // (bq_small + 1))
    if max_long_seqs > 0:
        n_large = min(num_tokens, -(-num_tokens // bq_large) + max_long_seqs)
        plan.append((bq_large, bq_small + 1, num_tokens, n_large))
    return plan


def _ragged_pallas(q, k_pages, v_pages, block_tables, seq_lens, query_start_loc, num_seqs,
                   *, sm_scale, block_q_rows, block_kv, num_warps, num_stages,
                   decode_num_warps, decode_num_stages, prefetch_rows, fused, interpret):
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads, _, page_size, _ = k_pages.shape
    num_slots, max_pages = block_tables.shape
    group = num_heads // num_kv_heads
    group_rows = _next_pow2(group)

    qg = q.reshape(num_tokens, num_kv_heads, group, head_dim)
    if group_rows != group:
        qg = jnp.pad(qg, ((0, 0), (0, 0), (0, group_rows - group), (0, 0)))
    lens = jnp.clip(seq_lens, 0, max_pages * page_size)
    num_seqs = jnp.clip(jnp.asarray(num_seqs, jnp.int32).reshape(()), 0, num_slots)
    qsl = query_start_loc.astype(jnp.int32)

    # Zeros: rows no tile covers (padding beyond query_start_loc[num_seqs]) stay zero.
    out = jnp.zeros_like(qg)
    classes = []
    # Named so a test can find these ops in compiled HLO: the layers of an engine step
    # share one copy of them (CSE), which the GPU check's per-layer figure relies on.
    with jax.named_scope("ragged_tile_lists"):
        for block_q, lo, hi, n in tile_plan(num_tokens, num_slots, group, block_q_rows):
            if n > 0:
                classes.append((block_q, query_tiles(qsl, lens, num_seqs, block_q=block_q,
                                                     min_q_len=lo, max_q_len=hi,
                                                     num_tiles=n)))
    call = functools.partial(_ragged_call, bt=block_tables, qg=qg, k_pages=k_pages,
                             v_pages=v_pages, block_kv=block_kv,
                             scale_log2=float(sm_scale) * LOG2E, prefetch_rows=prefetch_rows,
                             interpret=interpret)
    if fused and len(classes) == 2:  # prefill tiles first, the launch of prefill tiles
        out = call(classes[::-1], out=out, num_warps=num_warps, num_stages=num_stages)
    else:
        for i, cls in enumerate(classes):
            # Class 0 is the 16-row (decode) tiles: a decode kernel's launch shape suits them.
            warps, stages = ((decode_num_warps, decode_num_stages) if i == 0
                             else (num_warps, num_stages))
            out = call([cls], out=out, num_warps=warps, num_stages=stages)
    out = out[:, :, :group, :].reshape(num_tokens, num_heads, head_dim)
    return out


# ----------------------------------------------------------------------------- public API


def ragged_paged_attention(q, k_pages, v_pages, block_tables, seq_lens, query_start_loc,
                           num_seqs, *, sm_scale=None, block_q_rows=DEFAULT_BLOCK_Q_ROWS,
                           block_kv=None, num_warps=4, num_stages=3, decode_num_warps=2,
                           decode_num_stages=4, prefetch_rows=True, fused=False,
                           interpret=False):
    """Attention for a flat ragged batch of prefill chunks and decode tokens: [T, Hq, D].

    q [T, Hq, D]; k_pages, v_pages [Hkv, num_pages, page_size, D]; block_tables [S, P]
    int32; seq_lens [S] int32 (context length including the new tokens, already in the
    pages); query_start_loc [S + 1] int32; num_seqs int32 scalar (may be traced): the real
    sequences. Row t of sequence i sits at position seq_lens[i] - q_len_i + (t - qsl[i])
    and attends causally to keys 0..position. Rows >= query_start_loc[num_seqs] give zeros.
    Query head h reads KV head h // (Hq // Hkv); sm_scale defaults to 1/sqrt(head_dim).
    block_q_rows: rows (tokens x padded group) of a prefill tile; block_kv: KV tokens per
    inner step; num_warps / num_stages: Triton launch parameters of the prefill tiles,
    decode_num_warps / decode_num_stages those of the 16-row tiles of short query ranges;
    prefetch_rows: gather the next KV tile's row ids one iteration ahead (see
    `paged_decode_attention`; False: the first version's page-gather loop); fused: both
    tile classes in one launch (prefill tiles first) with the prefill tiles' launch
    parameters, instead of one launch per class; interpret=True: CPU.
    Raises ValueError (naming the argument) on unsupported shapes or dtypes.
    """
    _check(getattr(q, "ndim", None) == 3, "q", "a 3-d array [num_tokens, num_heads, head_dim]",
           f"shape {getattr(q, 'shape', type(q))}")
    _, page_size = check_kv_pages(q, k_pages, v_pages)
    num_tokens, _, head_dim = q.shape
    _check(getattr(block_tables, "ndim", None) == 2 and block_tables.shape[0] >= 1
           and block_tables.shape[1] >= 1, "block_tables",
           "shape (num_seqs_padded >= 1, max_pages >= 1)",
           f"{getattr(block_tables, 'shape', None)}")
    _check(block_tables.dtype == jnp.int32, "block_tables", "dtype int32",
           f"{block_tables.dtype}")
    num_slots = block_tables.shape[0]
    _check_int_vector(seq_lens, "seq_lens", num_slots)
    _check_int_vector(query_start_loc, "query_start_loc", num_slots + 1)
    num_seqs = jnp.asarray(num_seqs)
    _check(num_seqs.size == 1 and jnp.issubdtype(num_seqs.dtype, jnp.integer), "num_seqs",
           "an int32 scalar", f"shape {num_seqs.shape} dtype {num_seqs.dtype}")
    _check(isinstance(block_q_rows, int) and block_q_rows >= SMALL_TILE_ROWS
           and (block_q_rows & (block_q_rows - 1)) == 0, "block_q_rows",
           f"a power of two >= {SMALL_TILE_ROWS}", block_q_rows)
    if block_kv is None:
        block_kv = default_block_kv_ragged(page_size, q.dtype)
    _check(isinstance(block_kv, int) and block_kv >= max(page_size, 16)
           and block_kv % page_size == 0 and (block_kv & (block_kv - 1)) == 0, "block_kv",
           f"a power of two >= 16 and a multiple of page_size={page_size}", block_kv)
    _check(num_warps in (1, 2, 4, 8, 16), "num_warps", "one of 1, 2, 4, 8, 16", num_warps)
    _check(isinstance(num_stages, int) and num_stages >= 1, "num_stages", "an int >= 1",
           num_stages)
    _check(decode_num_warps in (1, 2, 4, 8, 16), "decode_num_warps", "one of 1, 2, 4, 8, 16",
           decode_num_warps)
    _check(isinstance(decode_num_stages, int) and decode_num_stages >= 1, "decode_num_stages",
           "an int >= 1", decode_num_stages)
    if sm_scale is None:
        sm_scale = head_dim ** -0.5
    if num_tokens == 0:
        return jnp.zeros_like(q)
    return _ragged_pallas(q, k_pages, v_pages, block_tables, seq_lens, query_start_loc,
                          num_seqs, sm_scale=float(sm_scale), block_q_rows=block_q_rows,
                          block_kv=block_kv, num_warps=num_warps, num_stages=num_stages,
                          decode_num_warps=decode_num_warps,
                          decode_num_stages=decode_num_stages,
                          prefetch_rows=bool(prefetch_rows), fused=bool(fused),
                          interpret=interpret)


# ----------------------------------------------------------------------------- reference


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
    p = masked_softmax(s, mask[:, None, None, :])
    o = jnp.einsum("tkgl,ktld->tkgd", p, v.astype(jnp.float32))
    return o.reshape(num_tokens, num_heads, head_dim).astype(q.dtype)


def ragged_paged_attention_tiled(q, k_pages, v_pages, block_tables, seq_lens, query_start_loc,
                                 num_seqs, *, sm_scale=None, block_q=16, tiles_per_chunk=8):
    """The same attention in plain jnp, organised for XLA on a CPU: [T, Hq, D].

    The reference gathers a sequence's whole context for every query row (a matrix-vector
    product per row, and T x context of gathered K/V). Here query rows are grouped into tiles
    of one sequence (`query_tiles`, shared with the Pallas kernel): decode rows one per tile,
    longer query ranges block_q rows per tile, so K/V are gathered once per tile and the
    scores are batched matrix products. The tile lists have a static bound, but a while loop
    walks only the chunks that hold real tiles, so the work follows the batch, not the bound.
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads, _, page_size, _ = k_pages.shape
    num_slots = block_tables.shape[0]
    group = num_heads // num_kv_heads
    scale = head_dim ** -0.5 if sm_scale is None else sm_scale
    qsl = query_start_loc.astype(jnp.int32)
    num_seqs = jnp.clip(jnp.asarray(num_seqs, jnp.int32).reshape(()), 0, num_slots)
    ctx = block_tables.shape[1] * page_size
    out = jnp.zeros((num_tokens + 1, num_heads, head_dim), jnp.float32)   # +1: dropped rows
    n_long = min(num_tokens, -(-num_tokens // block_q) + min(num_slots, num_tokens // 2))
    plan = [(1, 1, 1, min(num_slots, num_tokens), 2 * tiles_per_chunk)]
    if num_tokens >= 2 and n_long > 0:
        plan.append((block_q, 2, num_tokens, n_long, tiles_per_chunk))

    for bq, lo, hi, n, chunk in plan:
        n_pad = -(-n // chunk) * chunk
        meta = query_tiles(qsl, seq_lens, num_seqs, block_q=bq, min_q_len=lo, max_q_len=hi,
                           num_tiles=n_pad)
        num_chunks = (jnp.sum(meta[2] > 0) + chunk - 1) // chunk   # real tiles come first
        r = jnp.arange(bq, dtype=jnp.int32)

        def body(c, out, meta=meta, bq=bq, chunk=chunk, r=r):
            seq, row0, nrows, pos0 = lax.dynamic_slice_in_dim(meta, c * chunk, chunk, axis=1)
            row_ok = r[None, :] < nrows[:, None]                              # [C, bq]
            rows = jnp.where(row_ok, row0[:, None] + r[None, :], num_tokens)
            # Layout [Hkv, tile, rows, ...]: the gathered K/V already are [Hkv, tile, ctx, D],
            # so both products are batched over (Hkv, tile) with no transpose of K/V.
            qt = q[jnp.minimum(rows, num_tokens - 1)].astype(jnp.float32)
            qt = qt.reshape(chunk, bq, num_kv_heads, group, head_dim).transpose(2, 0, 1, 3, 4)
            qt = qt.reshape(num_kv_heads, chunk, bq * group, head_dim)
            pages = block_tables[seq]
            k = k_pages[:, pages].reshape(num_kv_heads, chunk, ctx, head_dim).astype(jnp.float32)
            v = v_pages[:, pages].reshape(num_kv_heads, chunk, ctx, head_dim).astype(jnp.float32)
            s = jnp.einsum("knrd,knld->knrl", qt, k) * scale
            qpos = pos0[:, None] + r[None, :]
            mask = (jnp.arange(ctx)[None, None, :] <= qpos[:, :, None]) & row_ok[:, :, None]
            mask = jnp.repeat(mask, group, axis=1)                            # [C, bq*G, L]
            o = jnp.einsum("knrl,knld->knrd", masked_softmax(s, mask[None]), v)
            o = o.reshape(num_kv_heads, chunk, bq, group, head_dim).transpose(1, 2, 0, 3, 4)
            return out.at[rows].set(o.reshape(chunk, bq, num_heads, head_dim), mode="drop")

        out = lax.fori_loop(0, num_chunks, body, out)
    return out[:num_tokens].astype(q.dtype)
