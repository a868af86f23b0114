"""The CPU attention path (query-tiled plain jnp) equals the per-row oracle."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import ragged_paged_attention_reference, ragged_paged_attention_tiled


@pytest.mark.parametrize("group,block_q", [(1, 8), (4, 8), (4, 32), (7, 16)])
def test_tiled_equals_reference_on_random_ragged_batches(group, block_q):
    rng = np.random.default_rng(group * 100 + block_q)
    hkv, d, num_pages, page = 2, 64, 128, 16
    hq = hkv * group
    kp = jnp.asarray(rng.normal(size=(hkv, num_pages, page, d)), jnp.float32)
    vp = jnp.asarray(rng.normal(size=(hkv, num_pages, page, d)), jnp.float32)
    fn = jax.jit(ragged_paged_attention_tiled, static_argnames=("block_q",))
    for _ in range(12):
        slots = int(rng.integers(1, 9))
        tokens = int(rng.choice([16, 32, 64]))
        q_lens, left = [], tokens
        for _ in range(slots):        # decodes, chunks, page-boundary lengths, empty tails
            ql = int(rng.choice([1, 1, 15, 16, 17, 40])) if left else 0
            ql = min(ql, left)
            q_lens.append(ql)
            left -= ql
        seq_lens = [ql + int(rng.integers(0, 60)) if ql else 0 for ql in q_lens]
        num_seqs = int(rng.integers(1, slots + 1))
        tables = rng.permutation(num_pages)[:slots * 8].reshape(slots, 8)   # shuffled pages
        qsl = np.concatenate([[0], np.cumsum(q_lens)])
        q = jnp.asarray(rng.normal(size=(tokens, hq, d)), jnp.float32)
        args = (q, kp, vp, jnp.asarray(tables, jnp.int32), jnp.asarray(seq_lens, jnp.int32),
                jnp.asarray(qsl, jnp.int32), jnp.int32(num_seqs))
        want = ragged_paged_attention_reference(*args)
        got = fn(*args, block_q=block_q)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)
