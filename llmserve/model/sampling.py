"""Token sampling on device: greedy, temperature, top-k, top-p, with explicit per-row keys.

Each row's key is derived from (request seed, index of the token being sampled), so a
request's tokens do not depend on what else is in the batch, on the step it runs in, or on
preemption and recompute.

No step sorts the vocabulary (32k-152k entries; a sort per row cost 30x an argmax on a CPU):
- greedy rows are an argmax; when no row samples, nothing else runs (lax.cond);
- a sampled row draws by Gumbel-max: argmax over its kept tokens of logit / T + g, where the
  noise g of a token is a function of (row key, token id) only. So the token depends on the
  kept set alone, never on which path below found it or on the static candidate cap;
- top-k and top-p rows find their kept set among the `cap` largest logits (lax.top_k, a
  static cap the runner picks from the batch's largest top_k); a row whose set is not settled
  there (top_k > cap, or a top-p nucleus holding more than cap tokens) gets the exact
  threshold over its full row by a 32-step bisection on the float's bit pattern, so nothing
  is truncated.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Candidate caps the runner chooses among (static variants of the step): the smallest one
# holding the batch's largest top_k; larger top_k go to the full-row threshold search.
CANDIDATE_CAPS = (64, 256, 1024)


def candidate_cap(temperature, top_k, vocab: int) -> int:
    """The static cap for a batch (host arrays of the real rows): the smallest of
    CANDIDATE_CAPS holding every sampled row's top_k, else the largest, capped at vocab."""
    t, k = np.asarray(temperature), np.asarray(top_k)
    ks = k[(t > 0) & (k > 0) & (k < vocab)]
    need = int(ks.max()) if ks.size else 0
    cap = next((c for c in CANDIDATE_CAPS if c >= need), CANDIDATE_CAPS[-1])
    return min(cap, vocab)


def _row_key(seed, idx):
    return jax.random.fold_in(jax.random.PRNGKey(seed), idx)


def _argmax(x):
    """First index of each row's maximum (as jnp.argmax), as two plain reductions: XLA's CPU
    argmax (a variadic reduce) took 10x longer at 16 x 32000."""
    v = x.shape[-1]
    m = jnp.max(x, axis=-1, keepdims=True)
    ids = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    # min() keeps a row of NaNs (no index equals its max) inside the vocabulary.
    return jnp.minimum(jnp.min(jnp.where(x == m, ids, v), axis=-1), v - 1)


def _fmix(h):
    # murmur3's 32-bit finalizer: a bijection that spreads every input bit over the output.
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _gumbel(keys, ids):
    """Gumbel noise of token `ids` [S, N] under row keys [S, 2] (uint32 words of the row's
    threefry key). A keyed hash, not threefry over the vocabulary: threefry for every token
    of every row cost more than the rest of the sampler; the row key itself is threefry's."""
    h = _fmix(ids.astype(jnp.uint32) * jnp.uint32(0x9E3779B1) + keys[:, :1])
    h = _fmix(h ^ keys[:, 1:])
    # 23 bits, so (k + 0.5) * 2**-23 is exact in float32 and u stays inside (0, 1).
    u = ((h >> 9).astype(jnp.float32) + 0.5) * (1.0 / (1 << 23))
    return -jnp.log(-jnp.log(u))


def _order_key(x):
    """float32 -> uint32 with the same order (negatives flipped below the positives)."""
    b = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where((b >> 31) == 1, ~b, b | jnp.uint32(0x80000000))


def _full_threshold(scaled, probs, k, top_p):
    """Exact kept set over whole rows: order-key threshold t* such that token i is kept iff
    key_i >= t*, where i is kept iff fewer than k tokens (k = 0: no limit) are strictly larger
    and the mass of the strictly larger ones is < top_p (what a descending sort keeps).
    Both conditions only get easier as t grows, so t* is found bit by bit."""
    key = _order_key(scaled)
    k_lim = jnp.where(k > 0, k, scaled.shape[-1] + 1)[:, None]

    def body(i, ans):
        cand = ans | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        above = key > cand[:, None]
        ok = ((jnp.sum(jnp.where(above, probs, 0.0), axis=-1, keepdims=True) < top_p[:, None])
              & (jnp.sum(above, axis=-1, keepdims=True) < k_lim))[:, 0]
        return jnp.where(ok, ans, cand)

    last_rejected = jax.lax.fori_loop(0, 32, body, jnp.zeros(scaled.shape[0], jnp.uint32))
    return key, last_rejected + 1


def _draw(logits, temperature, top_k, top_p, keys, cap: int):
    s, vocab = logits.shape
    t = jnp.where(temperature > 0, temperature, 1.0)[:, None]
    scaled = logits / t
    lse = jax.nn.logsumexp(scaled, axis=-1, keepdims=True)
    k = jnp.where((top_k <= 0) | (top_k >= vocab), 0, top_k)
    use_p = top_p < 1.0
    filtered = (k > 0) | use_p

    def candidates():
        # The cap largest, descending (lower token id first among equals).
        vals, idx = jax.lax.top_k(scaled, cap)
        probs = jnp.exp(vals - lse)
        csum = jnp.cumsum(probs, axis=-1)
        n_p = jnp.sum((csum - probs) < top_p[:, None], axis=-1)
        k_in = (k > 0) & (k <= cap)
        n_keep = jnp.minimum(jnp.where(k_in, k, cap), jnp.where(use_p, n_p, cap))
        thr = jnp.take_along_axis(vals, (jnp.maximum(n_keep, 1) - 1)[:, None], axis=-1)
        # Settled among the candidates: top-k within the cap, or the nucleus closes inside
        # them (the candidates' mass reaches top_p), or they are the whole vocabulary.
        settled = k_in | (use_p & (csum[:, -1] >= top_p)) | (cap >= vocab)
        pick = _argmax(jnp.where(vals >= thr, vals + _gumbel(keys, idx), -jnp.inf))
        return jnp.take_along_axis(idx, pick[:, None], axis=-1)[:, 0], settled

    # Only when a sampled row filters: plain temperature sampling needs no candidates.
    cand_tok, settled = jax.lax.cond(
        jnp.any(filtered & (temperature > 0)), candidates,
        lambda: (jnp.zeros(s, jnp.int32), jnp.zeros(s, bool)))

    # Whole rows: plain temperature rows, and filtered rows the candidates did not settle.
    full_row = (temperature > 0) & ~(filtered & settled)
    search = full_row & filtered

    def full_rows():
        key, t_star = jax.lax.cond(
            jnp.any(search),
            lambda: _full_threshold(scaled, jnp.exp(scaled - lse), jnp.where(search, k, 0),
                                    jnp.where(search, top_p, 1.0)),
            lambda: (jnp.zeros(scaled.shape, jnp.uint32), jnp.zeros(s, jnp.uint32)))
        # Rows without a filter keep every token (their bisection result is not used).
        t_star = jnp.where(search, t_star, 0)
        ids = jax.lax.broadcasted_iota(jnp.int32, scaled.shape, 1)
        noisy = scaled + _gumbel(keys, ids)
        return _argmax(jnp.where(key >= t_star[:, None], noisy, -jnp.inf))

    full_tok = jax.lax.cond(jnp.any(full_row), full_rows, lambda: jnp.zeros(s, jnp.int32))
    return jnp.where(full_row, full_tok, cand_tok).astype(jnp.int32)


def sample(logits, temperature, top_k, top_p, seeds, token_index, cap: int = CANDIDATE_CAPS[0]):
    """logits [S, V] float32; temperature/top_p float [S]; top_k, seeds, token_index int [S];
    cap (static): how many candidates top-k / top-p rows are resolved among (see
    candidate_cap); rows needing more are resolved exactly over the whole row.

    temperature == 0 means greedy; top_k <= 0 (or >= V) disables top-k; top_p == 1 disables
    top-p. Returns (token ids [S] int32, logprob of each chosen token under the model's
    unmodified distribution [S]).
    """
    vocab = logits.shape[-1]
    cap = max(1, min(cap, vocab))
    greedy = _argmax(logits)
    keys = jax.vmap(_row_key)(seeds.astype(jnp.uint32), token_index.astype(jnp.uint32))
    sampled = temperature > 0
    drawn = jax.lax.cond(jnp.any(sampled),
                         lambda: _draw(logits, temperature, top_k, top_p, keys, cap),
                         lambda: greedy)
    tokens = jnp.where(sampled, drawn, greedy)
    lse = jax.nn.logsumexp(logits, axis=-1)
    chosen_logprob = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0] - lse
    return tokens, chosen_logprob


def top_logprobs(logits, k: int):
    """The k most likely tokens of each row under the same unmodified distribution as
    sample()'s chosen-token logprob (log_softmax of the logits, before temperature, top-k and
    top-p). Returns (token ids [S, k] int32, logprobs [S, k]), most likely first."""
    return _top(jax.nn.log_softmax(logits, axis=-1), k)


def _top(logprobs, k: int):
    lps, ids = jax.lax.top_k(logprobs, min(k, logprobs.shape[-1]))
    return ids.astype(jnp.int32), lps


def prompt_logprobs(logits, targets, k: int):
    """logits [T, V] of every token row, targets [T] int: the token that follows each row.
    Returns (logprob of each row's target [T], and when k > 0 the k most likely tokens of each
    row: ids [T, k] int32, logprobs [T, k]), under log_softmax of the unmodified logits like
    the output tokens' logprobs."""
    lsm = jax.nn.log_softmax(logits, axis=-1)
    chosen = jnp.take_along_axis(lsm, targets[:, None], axis=-1)[:, 0]
    if not k:
        return (chosen,)
    return (chosen, *_top(lsm, k))
