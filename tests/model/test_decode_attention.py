"""The runner's plain-jnp decode attention (blockwise, online softmax) against the oracle
pallas_kernels.paged_decode_attention_reference, which gathers whole contexts at once."""
import jax.numpy as jnp
import numpy as np
import pytest

from llmserve.model.attention import decode_attention_blockwise
from pallas_kernels import paged_decode_attention_reference


@pytest.mark.parametrize("heads,kv_heads,max_blocks,chunk", [(4, 2, 16, 8), (6, 6, 5, 2),
                                                             (8, 1, 3, 8)])
def test_matches_the_oracle(heads, kv_heads, max_blocks, chunk):
    rng = np.random.default_rng(max_blocks)
    num_blocks, page, d, seqs = 40, 4, 16, 7
    k = rng.normal(size=(kv_heads, num_blocks, page, d)).astype(np.float32)
    v = rng.normal(size=(kv_heads, num_blocks, page, d)).astype(np.float32)
    q = rng.normal(size=(seqs, heads, d)).astype(np.float32)
    # Lengths: empty (padding row), one token, exactly a chunk's end, the full table, others.
    lens = np.array([0, 1, min(chunk * page, max_blocks * page), max_blocks * page,
                     *rng.integers(1, max_blocks * page + 1, seqs - 4)], np.int32)
    # Ids past a sequence's last block are garbage (possibly out of range): never read.
    tables = rng.integers(0, num_blocks + 5, (seqs, max_blocks)).astype(np.int32)
    for i, n in enumerate(lens):
        used = -(-n // page)
        tables[i, :used] = rng.choice(num_blocks, used, replace=False)
    args = [jnp.asarray(x) for x in (q, k, v, tables, lens)]
    got = decode_attention_blockwise(*args, blocks_per_chunk=chunk)
    want = paged_decode_attention_reference(*args)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)
    assert not np.asarray(got)[0].any(), "an empty sequence gives zeros"
