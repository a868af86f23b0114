"""Attention metadata for the flat ragged batch, and paged attention via reference or Pallas."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

# Imported here, not inside paged_attention: a first import during tracing changes jax's
# tracing context and made the first shape compile twice.
from pallas_kernels import paged_decode_attention, ragged_paged_attention
from pallas_kernels.ragged_paged_attention import ragged_paged_attention_tiled

ATTENTION_IMPLS = ("reference", "pallas", "pallas_interpret")


@dataclasses.dataclass
class AttentionMetadata:
    """Arrays describing one ragged batch; shapes are padded to buckets by the runner.

    slot_mapping [T]: flat cache slot of each token (num_blocks*block_size for padding).
    query_start_loc [S+1]: sequence i's tokens are rows [qsl[i], qsl[i+1]).
    seq_lens [S]: context length of each sequence including this step's tokens (0 = padding).
    block_tables [S, max_blocks]: physical block ids of each sequence.
    num_seqs []: number of real sequences.
    decode_only (static): every sequence has exactly one query row and row i belongs to
      sequence i, so the decode kernel (flash-decoding splits) can serve the batch.
    """
    slot_mapping: jax.Array
    query_start_loc: jax.Array
    seq_lens: jax.Array
    block_tables: jax.Array
    num_seqs: jax.Array
    decode_only: bool = False


jax.tree_util.register_dataclass(
    AttentionMetadata,
    data_fields=["slot_mapping", "query_start_loc", "seq_lens", "block_tables", "num_seqs"],
    meta_fields=["decode_only"])


def paged_attention(q, k_pages, v_pages, md: AttentionMetadata, impl: str = "reference"):
    """q [T, Hq, D] -> [T, Hq, D] over the paged cache (this step's K/V already written)."""
    if md.decode_only:
        if impl == "reference":
            return decode_attention_blockwise(q, k_pages, v_pages, md.block_tables, md.seq_lens)
        if impl in ("pallas", "pallas_interpret"):
            return paged_decode_attention(q, k_pages, v_pages, md.block_tables, md.seq_lens,
                                          interpret=impl == "pallas_interpret")
    if impl == "reference":
        # Plain jnp, tiled by query so XLA runs matrix products (tested against the oracle
        # pallas_kernels.ragged_paged_attention_reference).
        return ragged_paged_attention_tiled(
            q, k_pages, v_pages, md.block_tables, md.seq_lens, md.query_start_loc, md.num_seqs)
    if impl in ("pallas", "pallas_interpret"):
        return ragged_paged_attention(
            q, k_pages, v_pages, md.block_tables, md.seq_lens, md.query_start_loc, md.num_seqs,
            interpret=impl == "pallas_interpret")
    raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")


def decode_attention_blockwise(q, k_pages, v_pages, block_tables, seq_lens, *,
                               blocks_per_chunk: int = 8):
    """Decode attention in plain jnp, one query row per sequence: q [S, Hq, D] -> [S, Hq, D].

    pallas_kernels.paged_decode_attention_reference (the oracle) gathers every sequence's
    whole padded context at once; at 64 sequences x 512 tokens that is a 33 MB copy, written
    and read again, and on a CPU the step's largest cost. Here a loop walks the block table
    `blocks_per_chunk` columns at a time with an online softmax, so each gathered chunk stays
    in cache, and stops after the longest sequence's last block instead of the bucket's.
    """
    s, num_heads, d = q.shape
    num_kv_heads, _, page_size, _ = k_pages.shape
    group = num_heads // num_kv_heads
    nb = block_tables.shape[1]
    chunk = min(blocks_per_chunk, nb)
    n_chunks = -(-nb // chunk)
    tables = jnp.pad(block_tables, ((0, 0), (0, n_chunks * chunk - nb)))
    width = chunk * page_size
    qg = (q.astype(jnp.float32) * d ** -0.5).reshape(s, num_kv_heads, group, d)
    qg = qg.transpose(1, 0, 2, 3)                                   # [Hkv, S, G, D]
    used = (jnp.max(seq_lens) + width - 1) // width

    def body(c, carry):
        m, l, acc = carry
        cols = jax.lax.dynamic_slice_in_dim(tables, c * chunk, chunk, axis=1).reshape(-1)
        # Block ids come from the block table, so they are in range: "clip" spares the
        # gather the out-of-bounds handling of the default mode.
        k = jnp.take(k_pages, cols, axis=1, mode="clip").reshape(num_kv_heads, s, width, d)
        v = jnp.take(v_pages, cols, axis=1, mode="clip").reshape(num_kv_heads, s, width, d)
        sc = jnp.einsum("ksgd,ksld->ksgl", qg, k.astype(jnp.float32))
        pos = c * width + jnp.arange(width)
        sc = jnp.where((pos[None, :] < seq_lens[:, None])[None, :, None, :], sc, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(sc, axis=-1))
        # A row with nothing valid yet keeps m = -inf: shift by 0 there, not by -inf.
        shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        p = jnp.exp(sc - shift[..., None])
        scale = jnp.exp(m - shift)
        l = l * scale + jnp.sum(p, axis=-1)
        acc = acc * scale[..., None] + jnp.einsum("ksgl,ksld->ksgd", p, v.astype(jnp.float32))
        return m_new, l, acc

    init = (jnp.full((num_kv_heads, s, group), -jnp.inf, jnp.float32),
            jnp.zeros((num_kv_heads, s, group), jnp.float32),
            jnp.zeros((num_kv_heads, s, group, d), jnp.float32))
    _, l, acc = jax.lax.fori_loop(0, used, body, init)
    # Zero-length (padding) sequences: l = 0, output 0 as the oracle gives.
    out = acc / jnp.where(l > 0, l, 1.0)[..., None]
    return out.transpose(1, 0, 2, 3).reshape(s, num_heads, d).astype(q.dtype)


def dense_metadata(token_counts, block_size: int, num_blocks: int):
    """Metadata for sequences written from position 0 into consecutive blocks (tests, parity)."""
    import numpy as np
    seqs = len(token_counts)
    max_blocks = max(1, max(-(-n // block_size) for n in token_counts))
    tables = np.zeros((seqs, max_blocks), np.int32)
    slots, nxt = [], 0
    for i, n in enumerate(token_counts):
        nb = -(-n // block_size)
        tables[i, :nb] = np.arange(nxt, nxt + nb)
        slots += [(nxt + p // block_size) * block_size + p % block_size for p in range(n)]
        nxt += nb
    if nxt > num_blocks:
        raise ValueError(f"{nxt} blocks needed, pool has {num_blocks}")
    qsl = np.concatenate([[0], np.cumsum(token_counts)]).astype(np.int32)
    return AttentionMetadata(jnp.asarray(slots, jnp.int32), jnp.asarray(qsl),
                             jnp.asarray(token_counts, jnp.int32), jnp.asarray(tables),
                             jnp.asarray(seqs, jnp.int32))
