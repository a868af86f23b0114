"""Paged decode attention: one query token per sequence over its KV pages.

k_pages, v_pages [num_kv_heads, num_pages, page_size, head_dim]; block_tables [B, max_pages]
int32; seq_lens [B] int32 (context length including the new token, already in the pages).

Four parts: the kernel (`_decode_kernel`), the pallas_call wrapper (`_decode_pallas`), the
checked public API (`paged_decode_attention`) and the plain-jnp oracle
(`paged_decode_attention_reference`).

Design (memory-bound: ~G FLOP per KV byte). One program per (sequence, KV head, split):
all G = Hq // Hkv query heads of a KV head share one [Gp, D] tile (Gp = G padded to a power
of two >= 16 for the tensor-core dot), so each KV byte is read once. The KV length is walked
in tiles of `block_kv` tokens = several pages gathered through the block table. The length
is split flash-decoding style into `num_splits` parts (chosen from B * Hkv against the SM
count) whose float32 partials (acc, running max, running sum) are merged in XLA with a
log-sum-exp. Softmax runs in float32 in the exp2 domain.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels import _compat
from pallas_kernels._compat import pl

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_PAGE_SIZES = (16, 32, 64)
SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
MIN_SPLIT_TOKENS = 512      # a flash-decoding split covers at least this many tokens
DEFAULT_NUM_SMS = 132       # H100 / H200 SXM
LOG2E = math.log2(math.e)
MASK_VALUE = -1e30          # finite: fully masked rows stay finite, never NaN


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def padded_group(group: int) -> int:
    """Rows of the query tile: the group padded to a power of two >= 16 (dot minimum)."""
    return max(16, _next_pow2(group))


def num_sms() -> int:
    """SMs of the first GPU (for the split heuristic); DEFAULT_NUM_SMS without one."""
    try:
        dev = jax.devices()[0]
    except RuntimeError:  # no backend initialised
        return DEFAULT_NUM_SMS
    if dev.platform in ("gpu", "cuda"):
        return int(getattr(dev, "core_count", DEFAULT_NUM_SMS) or DEFAULT_NUM_SMS)
    return DEFAULT_NUM_SMS


def default_block_kv(page_size: int, head_dim: int, dtype) -> int:
    """KV tokens per inner step: 64 (the H200 sweep of 2026-11-28 in BENCHMARKS.md: 64 with
    2 warps / 4 stages was best or within 2% of it at B=1, 64, 256)."""
    del dtype
    return max(64, page_size)


def choose_num_splits(batch: int, num_kv_heads: int, max_context: int, block_kv: int,
                      sms: int | None = None) -> int:
    """Flash-decoding splits: enough programs to fill the GPU, each >= MIN_SPLIT_TOKENS.

    B * Hkv programs already give ~2 waves on `sms` SMs -> 1 split. Otherwise split the
    (static, bucketed) max context into parts of at least MIN_SPLIT_TOKENS tokens.
    """
    sms = sms or num_sms()
    programs = batch * num_kv_heads
    target = 2 * sms
    if programs >= target:
        return 1
    max_tiles = -(-max_context // block_kv)
    by_length = max(1, max_context // max(MIN_SPLIT_TOKENS, block_kv))
    want = -(-target // programs)
    return int(max(1, min(want, by_length, max_tiles)))


def online_softmax_update(s, v, carry, precision):
    """One KV tile of flash attention in the exp2 domain, shared by both kernels.

    s [rows, block_kv] scaled (by sm_scale * log2 e) and masked scores; v [block_kv, D];
    carry (acc [rows, D] f32, running max [rows], running sum [rows]).
    """
    acc, m_prev, l_prev = carry
    m_new = jnp.maximum(m_prev, jnp.max(s, axis=1))
    alpha = jnp.exp2(m_prev - m_new)
    p = jnp.exp2(s - m_new[:, None])
    l_new = alpha * l_prev + jnp.sum(p, axis=1)
    pv = lax.dot_general(p.astype(v.dtype), v, (((1,), (0,)), ((), ())),
                         precision=precision, preferred_element_type=jnp.float32)
    return alpha[:, None] * acc + pv, m_new, l_new


def kv_tile_rows(bt_ref, t, tok, *, page_size, max_pages, num_pages, seq=None):
    """Rows of KV tile t in the pool seen as [num_pages * page_size, D]: [block_kv] int32.

    bt_ref is one sequence's table row [max_pages], or the whole table [S, max_pages] with
    the sequence `seq` (one indexer: the Triton lowering takes no `.at[seq][idx]` chain).
    tok = iota(block_kv). One gathered page id per token (4 distinct values for 64 tokens of
    16-token pages, served by L1) so the tile is one 2-D load with no reshape. Page indices
    past the table and page ids outside the pool are clamped, so no read leaves the arrays;
    the rows they name are masked out of the scores by position.
    """
    block_kv = tok.shape[0]
    pidx = jnp.minimum(t * (block_kv // page_size) + tok // page_size, max_pages - 1)
    page = bt_ref[pidx] if seq is None else bt_ref[seq, pidx]
    page = jnp.clip(page, 0, num_pages - 1)
    return page * page_size + tok % page_size


def kv_tile_pages(bt_ref, k_ref, v_ref, t, *, page_size, block_kv, max_pages, num_pages,
                  seq=None):
    """K, V [block_kv, D] of tile t the first version's way (prefetch_rows=False): the
    tile's page ids loaded in the same iteration, pages gathered from the [num_pages,
    page_size, D] pool and reshaped. bt_ref and seq as in `kv_tile_rows`."""
    pages_per_tile = block_kv // page_size
    idx = t * pages_per_tile + lax.broadcasted_iota(jnp.int32, (pages_per_tile,), 0)
    window = pl.ds(t * pages_per_tile, pages_per_tile)
    ids_ref = bt_ref.at[window] if seq is None else bt_ref.at[seq, window]
    page_ids = jnp.clip(_compat.load(ids_ref, mask=idx < max_pages, other=0), 0,
                        num_pages - 1)
    head_dim = k_ref.shape[-1]
    return (k_ref[page_ids].reshape(block_kv, head_dim),
            v_ref[page_ids].reshape(block_kv, head_dim))


def pool_operand(pages, prefetch_rows: bool, head_of):
    """One KV pool [Hkv, num_pages, page_size, D] as a pallas_call operand: (array,
    BlockSpec of KV head head_of(*grid indices)). With prefetch_rows the pool is seen as
    token rows [Hkv, num_pages * page_size, D] (a free reshape), so a tile is one 2-D row
    gather (`kv_tile_rows`); else pages stay whole (`kv_tile_pages`)."""
    num_kv_heads, num_pages, page_size, head_dim = pages.shape
    if prefetch_rows:
        rows = pages.reshape(num_kv_heads, num_pages * page_size, head_dim)
        return rows, pl.BlockSpec((None, num_pages * page_size, head_dim),
                                  lambda *g: (head_of(*g), 0, 0))
    return pages, pl.BlockSpec((None, num_pages, page_size, head_dim),
                               lambda *g: (head_of(*g), 0, 0, 0))


def masked_softmax(s, mask):
    """Softmax over the last axis of float32 scores where mask holds; all-masked rows -> 0.

    Shared by the plain-jnp references (never NaN for zero-length sequences).
    """
    s = jnp.where(mask, s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
    denom = jnp.sum(p, axis=-1, keepdims=True)
    return p / jnp.where(denom > 0, denom, 1.0)


# ----------------------------------------------------------------------------- kernel


def _decode_kernel(bt_ref, lens_ref, q_ref, k_ref, v_ref, *out_refs, group, page_size,
                   block_kv, num_splits, scale_log2, precision, finalize, prefetch_rows):
    """One (sequence b, KV head h, split s) program.

    bt_ref [max_pages] page ids of b; lens_ref [B]; q_ref [Hq, D] (all heads of b: rows
    h*G .. h*G+G-1 are read, padded to Gp rows by a masked load); k_ref, v_ref KV head h's
    pool, [num_pages * page_size, D] when prefetch_rows else [num_pages, page_size, D].
    Outputs: finalize -> o_ref [Hq, D], the normalized rows of head group h (masked store);
    else acc_ref [Gp, D] f32, m_ref [Gp] f32 (running max, log2 domain), l_ref [Gp] f32.
    Page ids are clamped into the pool and lengths to the table, so no read leaves the
    arrays whatever the table holds past a sequence's length.

    prefetch_rows: the next tile's row ids are gathered one iteration ahead and carried in
    the loop, so the K/V loads do not depend on a load of the same iteration. Triton's
    pipeliner then gives them num_stages - 1 shared-memory buffers; with the page ids
    loaded in the same iteration (the other path) it splits the stages between the id load
    and the K/V load and keeps only one buffer below 6 stages (seen in the sm_90 TTGIR).
    """
    b = pl.program_id(0)
    h = pl.program_id(1)
    split = pl.program_id(2)
    rows = padded_group(group)
    head_dim = q_ref.shape[-1]
    max_pages = bt_ref.shape[0]
    num_pages = k_ref.shape[0] // page_size if prefetch_rows else k_ref.shape[0]
    length = jnp.clip(lens_ref[b], 0, max_pages * page_size)
    num_tiles = (length + block_kv - 1) // block_kv
    tiles_per_split = (num_tiles + num_splits - 1) // num_splits
    t_start = split * tiles_per_split
    t_end = jnp.minimum(t_start + tiles_per_split, num_tiles)

    row_ok = lax.broadcasted_iota(jnp.int32, (rows,), 0) < group
    head_rows = pl.ds(h * group, rows)
    q = _compat.load(q_ref.at[head_rows], mask=row_ok[:, None], other=0.0)
    tok = lax.broadcasted_iota(jnp.int32, (block_kv,), 0)
    tile_rows = functools.partial(kv_tile_rows, bt_ref, tok=tok, page_size=page_size,
                                  max_pages=max_pages, num_pages=num_pages)

    def attend(t, k, v, carry):
        s = lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=precision,
                            preferred_element_type=jnp.float32) * scale_log2
        kpos = t * block_kv + lax.broadcasted_iota(jnp.int32, (rows, block_kv), 1)
        s = jnp.where(kpos < length, s, MASK_VALUE)
        return online_softmax_update(s, v, carry, precision)

    def body_prefetch(t, carry):
        *carry, kv_rows = carry
        next_rows = tile_rows(t + 1)
        return (*attend(t, k_ref[kv_rows], v_ref[kv_rows], carry), next_rows)

    def body_pages(t, carry):
        k, v = kv_tile_pages(bt_ref, k_ref, v_ref, t, page_size=page_size, block_kv=block_kv,
                             max_pages=max_pages, num_pages=num_pages)
        return attend(t, k, v, carry)

    init = (jnp.zeros((rows, head_dim), jnp.float32),
            jnp.full((rows,), MASK_VALUE, jnp.float32),
            jnp.zeros((rows,), jnp.float32))
    if prefetch_rows:
        acc, m, l, _ = lax.fori_loop(t_start, t_end, body_prefetch,
                                     (*init, tile_rows(t_start)))
    else:
        acc, m, l = lax.fori_loop(t_start, t_end, body_pages, init)
    if finalize:
        (o_ref,) = out_refs
        safe_l = jnp.where(l > 0.0, l, 1.0)
        o = jnp.where(l[:, None] > 0.0, acc / safe_l[:, None], 0.0).astype(o_ref.dtype)
        _compat.store(o_ref.at[head_rows], o, mask=row_ok[:, None])
    else:
        acc_ref, m_ref, l_ref = out_refs
        acc_ref[...] = acc
        m_ref[...] = m
        l_ref[...] = l


# ----------------------------------------------------------------------------- pallas_call


def merge_partials(acc, m, l):
    """Log-sum-exp merge over axis 2 of split partials: acc [..., S, Gp, D], m/l [..., S, Gp].

    m is in the log2 domain. Splits that saw no token have l = 0 and weight 0; a row whose
    splits are all empty comes out as zeros.
    """
    m_max = jnp.max(m, axis=2, keepdims=True)
    w = jnp.exp2(m - m_max)                                   # [..., S, Gp]
    denom = jnp.sum(w * l, axis=2)                            # [..., Gp]
    num = jnp.sum(w[..., None] * acc, axis=2)                 # [..., Gp, D]
    safe = jnp.where(denom > 0.0, denom, 1.0)
    return jnp.where(denom[..., None] > 0.0, num / safe[..., None], 0.0)


def _decode_pallas(q, k_pages, v_pages, block_tables, seq_lens, *, sm_scale, block_kv,
                   num_splits, num_warps, num_stages, prefetch_rows, interpret):
    """q [B, Hq, D] (validated) -> [B, Hq, D].

    Without splits the kernel writes the output itself (no XLA op around it); with splits
    it writes float32 partials that `merge_partials` combines.
    """
    batch, num_heads, head_dim = q.shape
    num_kv_heads, _, page_size, _ = k_pages.shape
    group = num_heads // num_kv_heads
    rows = padded_group(group)
    max_pages = block_tables.shape[1]
    precision = lax.Precision.HIGHEST if q.dtype == jnp.float32 else None
    finalize = num_splits == 1
    kernel = functools.partial(
        _decode_kernel, group=group, page_size=page_size, block_kv=block_kv,
        num_splits=num_splits, scale_log2=float(sm_scale) * LOG2E, precision=precision,
        finalize=finalize, prefetch_rows=prefetch_rows)
    k_pool, pool_spec = pool_operand(k_pages, prefetch_rows, lambda b, h, s: h)
    v_pool, _ = pool_operand(v_pages, prefetch_rows, lambda b, h, s: h)
    in_specs = [
        pl.BlockSpec((None, max_pages), lambda b, h, s: (b, 0)),
        pl.BlockSpec((batch,), lambda b, h, s: (0,)),
        pl.BlockSpec((None, num_heads, head_dim), lambda b, h, s: (b, 0, 0)),
        pool_spec,
        pool_spec,
    ]
    if finalize:
        out_shape = jax.ShapeDtypeStruct(q.shape, q.dtype)
        out_specs = pl.BlockSpec((None, num_heads, head_dim), lambda b, h, s: (b, 0, 0))
    else:
        out_shape = (
            jax.ShapeDtypeStruct((batch, num_kv_heads, num_splits, rows, head_dim),
                                 jnp.float32),
            jax.ShapeDtypeStruct((batch, num_kv_heads, num_splits, rows), jnp.float32),
            jax.ShapeDtypeStruct((batch, num_kv_heads, num_splits, rows), jnp.float32),
        )
        out_specs = (
            pl.BlockSpec((None, None, None, rows, head_dim), lambda b, h, s: (b, h, s, 0, 0)),
            pl.BlockSpec((None, None, None, rows), lambda b, h, s: (b, h, s, 0)),
            pl.BlockSpec((None, None, None, rows), lambda b, h, s: (b, h, s, 0)),
        )
    out = pl.pallas_call(
        kernel,
        grid=(batch, num_kv_heads, num_splits),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=_compat.compiler_params(num_warps, num_stages),
        interpret=interpret,
        name=f"paged_decode_attention_bkv{block_kv}_s{num_splits}" + ("" if prefetch_rows
                                                                      else "_pages"),
    )(block_tables, seq_lens, q, k_pool, v_pool)
    if finalize:
        return out
    o = merge_partials(*out).astype(q.dtype)              # [B, Hkv, Gp, D]
    return o[:, :, :group, :].reshape(batch, num_heads, head_dim)


# ----------------------------------------------------------------------------- public API


def _check(cond: bool, name: str, expected: str, got) -> None:
    if not cond:
        raise ValueError(f"{name}: expected {expected}, got {got}")


def check_kv_pages(q, k_pages, v_pages):
    """Shared checks of q [*, Hq, D] against the page pools; returns (Hkv, page_size)."""
    _check(getattr(k_pages, "ndim", None) == 4, "k_pages",
           "a 4-d array [num_kv_heads, num_pages, page_size, head_dim]",
           f"shape {getattr(k_pages, 'shape', type(k_pages))}")
    _check(getattr(v_pages, "shape", None) == k_pages.shape, "v_pages",
           f"the shape of k_pages {tuple(k_pages.shape)}",
           f"shape {getattr(v_pages, 'shape', type(v_pages))}")
    num_kv_heads, _, page_size, head_dim = k_pages.shape
    num_heads = q.shape[-2]
    _check(q.dtype in SUPPORTED_DTYPES, "q", "dtype float32 or bfloat16", f"{q.dtype}")
    _check(k_pages.dtype == q.dtype, "k_pages", f"dtype {q.dtype} (the dtype of q)",
           f"{k_pages.dtype}")
    _check(v_pages.dtype == q.dtype, "v_pages", f"dtype {q.dtype} (the dtype of q)",
           f"{v_pages.dtype}")
    _check(q.shape[-1] in SUPPORTED_HEAD_DIMS, "q",
           f"head_dim (last axis) in {SUPPORTED_HEAD_DIMS}", f"{q.shape[-1]} (shape {q.shape})")
    _check(head_dim == q.shape[-1], "k_pages", f"head_dim {q.shape[-1]} (that of q)",
           f"{head_dim} (shape {k_pages.shape})")
    _check(page_size in SUPPORTED_PAGE_SIZES, "k_pages",
           f"page_size (axis 2) in {SUPPORTED_PAGE_SIZES}", f"{page_size}")
    _check(num_kv_heads >= 1 and num_heads % num_kv_heads == 0, "q",
           f"a number of query heads divisible by num_kv_heads={num_kv_heads}",
           f"{num_heads}")
    _check(k_pages.shape[1] >= 1, "k_pages", "at least one page", f"shape {k_pages.shape}")
    return num_kv_heads, page_size


def _check_int_vector(x, name, length):
    _check(getattr(x, "ndim", None) == 1 and x.shape[0] == length, name,
           f"shape ({length},)", f"{getattr(x, 'shape', type(x))}")
    _check(x.dtype == jnp.int32, name, "dtype int32", f"{x.dtype}")


def resolve_block_kv(block_kv, page_size, head_dim, dtype) -> int:
    if block_kv is None:
        return default_block_kv(page_size, head_dim, dtype)
    _check(isinstance(block_kv, int) and block_kv >= page_size and block_kv % page_size == 0
           and (block_kv & (block_kv - 1)) == 0 and block_kv >= 16, "block_kv",
           f"a power of two >= 16 and a multiple of page_size={page_size}", block_kv)
    return block_kv


def paged_decode_attention(q, k_pages, v_pages, block_tables, seq_lens, *, sm_scale=None,
                           block_kv=None, num_splits=None, num_warps=2, num_stages=4,
                           prefetch_rows=True, interpret=False):
    """Decode attention over paged KV: q [B, Hq, D] -> [B, Hq, D].

    Query head h reads KV head h // (Hq // Hkv). seq_lens[b] tokens of sequence b (whose
    K/V, the new token's included, are in the pages named by block_tables[b]) are attended;
    zero-length sequences return zeros. sm_scale defaults to 1/sqrt(head_dim).
    block_kv: KV tokens per inner step (default 64, or the page size if larger); num_splits:
    flash-decoding splits (default from B * Hkv vs the SM count, each >= 512 tokens);
    num_warps / num_stages: Triton launch parameters; prefetch_rows: gather the next KV
    tile's row ids one iteration ahead so Triton pipelines the K/V loads num_stages - 1
    deep (False: the page-gather loop of the first version, kept for the GPU check's
    comparison). interpret=True runs on CPU.
    Raises ValueError (naming the argument) on unsupported shapes or dtypes.
    """
    _check(getattr(q, "ndim", None) == 3, "q", "a 3-d array [batch, num_heads, head_dim]",
           f"shape {getattr(q, 'shape', type(q))}")
    num_kv_heads, page_size = check_kv_pages(q, k_pages, v_pages)
    batch = q.shape[0]
    _check(getattr(block_tables, "ndim", None) == 2 and block_tables.shape[0] == batch
           and block_tables.shape[1] >= 1, "block_tables",
           f"shape ({batch}, max_pages >= 1)", f"{getattr(block_tables, 'shape', None)}")
    _check(block_tables.dtype == jnp.int32, "block_tables", "dtype int32",
           f"{block_tables.dtype}")
    _check_int_vector(seq_lens, "seq_lens", batch)
    head_dim = q.shape[-1]
    if sm_scale is None:
        sm_scale = head_dim ** -0.5
    block_kv = resolve_block_kv(block_kv, page_size, head_dim, q.dtype)
    max_context = block_tables.shape[1] * page_size
    if num_splits is None:
        num_splits = choose_num_splits(batch, num_kv_heads, max_context, block_kv)
    _check(isinstance(num_splits, int) and num_splits >= 1, "num_splits",
           "a positive int", num_splits)
    _check(num_warps in (1, 2, 4, 8, 16), "num_warps", "one of 1, 2, 4, 8, 16", num_warps)
    _check(isinstance(num_stages, int) and num_stages >= 1, "num_stages", "an int >= 1",
           num_stages)
    if batch == 0:
        return jnp.zeros_like(q)
    return _decode_pallas(q, k_pages, v_pages, block_tables, seq_lens,
                          sm_scale=float(sm_scale), block_kv=block_kv,
                          num_splits=num_splits, num_warps=num_warps,
                          num_stages=num_stages, prefetch_rows=bool(prefetch_rows),
                          interpret=interpret)


# ----------------------------------------------------------------------------- reference


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
    p = masked_softmax(s, mask[:, None, None, :])
    o = jnp.einsum("bkgl,kbld->bkgd", p, v.astype(jnp.float32))
    return o.reshape(batch, num_heads, head_dim).astype(q.dtype)
