"""Random paged-attention problems for the kernel tests (small pools: interpret mode)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

TOL = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.bfloat16): 2e-2}


def _cdiv(a, b):
    return -(-a // b)


def pool(rng, num_kv_heads, num_pages, page_size, head_dim, dtype):
    shape = (num_kv_heads, num_pages, page_size, head_dim)
    k = jnp.asarray(rng.standard_normal(shape), dtype)
    v = jnp.asarray(rng.standard_normal(shape), dtype)
    return k, v


def block_tables(rng, ctx_lens, num_pages, page_size, max_pages):
    """Each sequence owns distinct pages from a shuffled pool; unused entries are random
    (valid) ids, as a recycled table would hold."""
    need = [_cdiv(int(n), page_size) for n in ctx_lens]
    assert sum(need) <= num_pages, (need, num_pages)
    assert max(need, default=0) <= max_pages, (need, max_pages)
    perm = rng.permutation(num_pages)
    bt = rng.integers(0, num_pages, (len(ctx_lens), max_pages)).astype(np.int32)
    off = 0
    for i, n in enumerate(need):
        bt[i, :n] = perm[off:off + n]
        off += n
    return jnp.asarray(bt, jnp.int32)


def decode_case(rng, ctx_lens, *, num_heads, num_kv_heads, head_dim, page_size,
                num_pages=64, max_pages=None, dtype=jnp.float32):
    ctx_lens = list(ctx_lens)
    if max_pages is None:
        max_pages = max(1, max(_cdiv(n, page_size) for n in ctx_lens))
    q = jnp.asarray(rng.standard_normal((len(ctx_lens), num_heads, head_dim)), dtype)
    k, v = pool(rng, num_kv_heads, num_pages, page_size, head_dim, dtype)
    bt = block_tables(rng, ctx_lens, num_pages, page_size, max_pages)
    return q, k, v, bt, jnp.asarray(ctx_lens, jnp.int32)


def ragged_case(rng, q_lens, ctx_lens, *, num_heads, num_kv_heads, head_dim, page_size,
                num_tokens=None, num_slots=None, num_pages=64, max_pages=None,
                dtype=jnp.float32):
    """q_lens[i] new rows of sequence i at the end of its ctx_lens[i] tokens.

    num_tokens / num_slots pad T and S like the engine's buckets (padded slots: length 0,
    empty query range; padded rows: random values that must not leak)."""
    q_lens, ctx_lens = list(q_lens), list(ctx_lens)
    assert all(c >= ql for ql, c in zip(q_lens, ctx_lens))
    n = len(q_lens)
    used = sum(q_lens)
    num_tokens = num_tokens or max(used, 1)
    num_slots = num_slots or max(n, 1)
    assert num_tokens >= used and num_slots >= n
    if max_pages is None:
        max_pages = max(1, max([_cdiv(c, page_size) for c in ctx_lens], default=1))
    qsl = np.full(num_slots + 1, used, np.int32)
    qsl[0] = 0
    qsl[1:n + 1] = np.cumsum(q_lens)
    lens = np.zeros(num_slots, np.int32)
    lens[:n] = ctx_lens
    q = jnp.asarray(rng.standard_normal((num_tokens, num_heads, head_dim)), dtype)
    k, v = pool(rng, num_kv_heads, num_pages, page_size, head_dim, dtype)
    bt = block_tables(rng, list(ctx_lens) + [0] * (num_slots - n), num_pages, page_size,
                      max_pages)
    return (q, k, v, bt, jnp.asarray(lens), jnp.asarray(qsl), jnp.asarray(n, jnp.int32))


def assert_close(out, ref, dtype, what=""):
    out = np.asarray(jnp.asarray(out, jnp.float32))
    ref = np.asarray(jnp.asarray(ref, jnp.float32))
    assert np.all(np.isfinite(out)), f"{what}: non-finite output"
    err = float(np.max(np.abs(out - ref))) if out.size else 0.0
    tol = TOL[jnp.dtype(dtype)]
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:g}"
