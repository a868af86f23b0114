"""On-device sampling against a numpy oracle of the filtered distribution.

The oracle keeps token i iff fewer than top_k tokens are strictly more likely and their mass
(after temperature) is < top_p: what a descending sort with ">= threshold" keeps, ties
included. Frequencies are checked with a chi-square test per row type, all row types mixed
in one batch, and with candidate caps that force every path (candidates, whole-row search).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from llmserve.model.sampling import CANDIDATE_CAPS, candidate_cap, sample


def oracle(logits, temp, top_k, top_p):
    if temp == 0:
        p = np.zeros_like(logits, np.float64)
        p[np.argmax(logits)] = 1
        return p
    z = logits.astype(np.float64) / temp
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    k = top_k if 0 < top_k < len(z) else len(z) + 1
    keep = np.array([(z > zi).sum() < k and probs[z > zi].sum() < top_p for zi in z])
    p = np.where(keep, probs, 0)
    return p / p.sum()


@functools.partial(jax.jit, static_argnames="cap")
def jsample(logits, temp, top_k, top_p, seeds, idx, cap):
    return sample(logits, temp, top_k, top_p, seeds, idx, cap=cap)


def run(logits_rows, params, seeds, idx, cap):
    temp, top_k, top_p = (np.asarray(c) for c in zip(*params))
    toks, lps = jsample(jnp.asarray(np.asarray(logits_rows), jnp.float32),
                        jnp.asarray(temp, jnp.float32), jnp.asarray(top_k, jnp.int32),
                        jnp.asarray(top_p, jnp.float32), jnp.asarray(seeds, jnp.uint32),
                        jnp.asarray(idx, jnp.int32), cap=cap)
    return np.asarray(toks), np.asarray(lps)


def log_softmax(x):
    x = x.astype(np.float64)
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


# (temperature, top_k, top_p): greedy, plain temperature, top-k, top-p, both, a top-k above
# the cap used below, a nucleus larger than the cap, top_k >= V (no filter).
KINDS = [(0.0, -1, 1.0), (0.7, -1, 1.0), (1.0, 5, 1.0), (1.3, -1, 0.8), (1.0, 8, 0.6),
         (1.0, 11, 1.0), (2.0, 0, 0.97), (0.9, 40, 1.0)]


def assert_matches(tokens, p, label):
    counts = np.bincount(tokens, minlength=len(p))
    assert counts[p == 0].sum() == 0, f"{label}: drew a token outside the kept set"
    if (p > 0).sum() == 1:
        return
    nz = p > 0
    chi2, pval = stats.chisquare(counts[nz], p[nz] * len(tokens))
    assert pval > 1e-4, f"{label}: chi2 {chi2:.1f}, p-value {pval:.2g}"


@pytest.mark.parametrize("cap", [4, 64])
def test_every_mix_of_row_types_matches_the_oracle(cap):
    # cap=4 sends top_k=8/11 rows and the flat nucleus to the whole-row search; cap=64 (>= V)
    # settles every row among the candidates.
    rng = np.random.default_rng(0)
    base = (rng.normal(size=40) * 1.5).astype(np.float32)
    n = 3000
    kinds = np.tile(np.arange(len(KINDS)), n)          # every kind interleaved in one batch
    rng.shuffle(kinds)
    params = [KINDS[k] for k in kinds]
    idx = np.arange(len(kinds))
    toks, lps = run(np.tile(base, (len(kinds), 1)), params, 7 + idx % 5, idx, cap)
    for j, kind in enumerate(KINDS):
        assert_matches(toks[kinds == j], oracle(base, *kind), f"{kind} cap {cap}")
    # The logprob is the unmodified model's, whatever filter chose the token.
    np.testing.assert_allclose(lps, log_softmax(base)[toks], atol=1e-5)


def test_token_does_not_depend_on_cap_batch_or_position():
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(len(KINDS) * 8, 300)) * 2).astype(np.float32)
    params = [KINDS[i % len(KINDS)] for i in range(len(logits))]
    seeds, idx = rng.integers(0, 2**32, len(logits)), rng.integers(0, 10**6, len(logits))
    ref, _ = run(logits, params, seeds, idx, 4)
    np.testing.assert_array_equal(run(logits, params, seeds, idx, 64)[0], ref)
    perm = rng.permutation(len(logits))
    got, _ = run(logits[perm], [params[i] for i in perm], seeds[perm], idx[perm], 64)
    np.testing.assert_array_equal(got, ref[perm])
    for i in (0, 5, 13):
        alone, _ = run(logits[i:i + 1], params[i:i + 1], seeds[i:i + 1], idx[i:i + 1], 64)
        assert alone[0] == ref[i]


def test_greedy_is_argmax_with_ties_to_the_lowest_id():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6, 1000)).astype(np.float32)
    logits[1, [10, 500]] = 9.0
    logits[2, :] = 0.0
    params = [(0.0, -1, 1.0)] * 3 + [(0.0, 5, 0.5)] * 3   # filters do not touch greedy rows
    toks, _ = run(logits, params, np.arange(6), np.zeros(6), 64)
    np.testing.assert_array_equal(toks, np.argmax(logits, -1))
    assert toks[1] == 10 and toks[2] == 0


def test_ties_at_the_top_k_boundary_are_all_kept():
    logits = np.full(50, -3.0, np.float32)
    logits[[3, 17, 29]] = 2.0                      # top_k=3 ends inside a tie of three
    logits[40] = 4.0
    for cap in (2, 64):
        n = 4000
        toks, _ = run(np.tile(logits, (n, 1)), [(1.0, 3, 1.0)] * n, np.full(n, 11),
                      np.arange(n), cap)
        assert_matches(toks, oracle(logits, 1.0, 3, 1.0), f"ties cap {cap}")


def test_nucleus_larger_than_every_cap_is_not_truncated():
    # A flat row: the top_p=0.9 nucleus holds ~90% of 3000 tokens, beyond the largest cap.
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=3000) * 0.1).astype(np.float32)
    p = oracle(logits, 1.0, -1, 0.9)
    assert (p > 0).sum() > 2 * CANDIDATE_CAPS[-1]
    n = 5000
    toks, _ = run(np.tile(logits, (n, 1)), [(1.0, -1, 0.9)] * n, np.full(n, 3), np.arange(n),
                  CANDIDATE_CAPS[0])
    assert p[toks].min() > 0, "drew a token outside the nucleus"
    # Frequencies over 20 bins of tokens ranked by probability (each bin ~5% of the mass).
    order = np.argsort(-p)
    bins = np.zeros(len(p), int)
    bins[order] = np.minimum((np.cumsum(p[order]) * 20).astype(int), 19)
    kept = p > 0
    observed = np.bincount(bins[toks], minlength=20)
    expected = np.bincount(bins[kept], weights=p[kept], minlength=20) * n
    nz = expected > 0
    assert stats.chisquare(observed[nz], expected[nz]).pvalue > 1e-4


def test_candidate_cap_holds_the_batch_top_k():
    v = 32000
    assert candidate_cap([0.0, 0.0], [500, 500], v) == CANDIDATE_CAPS[0]  # greedy rows
    assert candidate_cap([1.0, 0.0], [50, 900], v) == 64
    assert candidate_cap([1.0, 1.0], [50, 100], v) == 256
    assert candidate_cap([1.0], [5000], v) == CANDIDATE_CAPS[-1]      # whole-row search
    assert candidate_cap([1.0], [-1], 40) == 40
