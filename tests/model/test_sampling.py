"""On-device sampling against a numpy oracle of the filtered distribution."""
import jax.numpy as jnp
import numpy as np

from llmserve.model.sampling import sample


def oracle(logits, temp, top_k, top_p):
    z = logits / temp
    order = np.argsort(-z)
    keep = np.zeros_like(z, bool)
    probs = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    mass = 0.0
    for rank, i in enumerate(order):
        if (top_k > 0 and rank >= top_k) or (rank > 0 and mass >= top_p):
            break
        keep[i] = True
        mass += probs[i]
    p = np.where(keep, probs, 0)
    return p / p.sum()


def test_empirical_distribution_matches_oracle():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=12).astype(np.float32) * 2
    n = 20000
    for temp, top_k, top_p in [(1.0, -1, 1.0), (0.7, 5, 1.0), (1.3, -1, 0.8), (1.0, 4, 0.6)]:
        toks, lps = sample(jnp.tile(logits, (n, 1)), jnp.full(n, temp, jnp.float32),
                           jnp.full(n, top_k, jnp.int32), jnp.full(n, top_p, jnp.float32),
                           jnp.full(n, 7, jnp.uint32), jnp.arange(n, dtype=jnp.int32))
        freq = np.bincount(np.asarray(toks), minlength=12) / n
        np.testing.assert_allclose(freq, oracle(logits, temp, top_k, top_p), atol=0.015)
        # logprobs are of the unmodified model distribution
        lsm = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
        np.testing.assert_allclose(np.asarray(lps), lsm[np.asarray(toks)], atol=1e-5)


def test_greedy_rows_and_per_row_keys():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(4, 50)), jnp.float32)
    toks, _ = sample(logits, jnp.zeros(4), jnp.full(4, -1), jnp.ones(4),
                     jnp.arange(4, dtype=jnp.uint32), jnp.zeros(4, jnp.int32))
    np.testing.assert_array_equal(np.asarray(toks), np.argmax(np.asarray(logits), -1))
    # A row's draw depends only on (seed, token index), not on its batch position.
    a, _ = sample(logits, jnp.ones(4), jnp.full(4, -1), jnp.ones(4),
                  jnp.asarray([5, 6, 7, 8], jnp.uint32), jnp.asarray([0, 1, 2, 3]))
    b, _ = sample(logits[::-1], jnp.ones(4), jnp.full(4, -1), jnp.ones(4),
                  jnp.asarray([8, 7, 6, 5], jnp.uint32), jnp.asarray([3, 2, 1, 0]))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[::-1])
