"""Attention metadata for the flat ragged batch, and paged attention via reference or Pallas."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

# Imported here, not inside paged_attention: a first import during tracing changes jax's
# tracing context and made the first shape compile twice.
from pallas_kernels import (
    paged_decode_attention,
    paged_decode_attention_reference,
    ragged_paged_attention,
)
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
            return paged_decode_attention_reference(q, k_pages, v_pages, md.block_tables,
                                                    md.seq_lens)
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
