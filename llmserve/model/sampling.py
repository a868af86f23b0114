"""Token sampling on device: greedy, temperature, top-k, top-p, with explicit per-row keys.

Each row's key is derived from (request seed, index of the token being sampled), so a
request's tokens do not depend on what else is in the batch, on the step it runs in, or on
preemption and recompute.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _row_key(seed, idx):
    return jax.random.fold_in(jax.random.PRNGKey(seed), idx)


def sample(logits, temperature, top_k, top_p, seeds, token_index):
    """logits [S, V] float32; temperature/top_p float [S]; top_k, seeds, token_index int [S].

    temperature == 0 means greedy; top_k <= 0 (or >= V) disables top-k; top_p == 1 disables
    top-p. Returns (token ids [S] int32, logprob of each chosen token under the model's
    unmodified distribution [S]).
    """
    vocab = logits.shape[-1]
    logprobs_all = jax.nn.log_softmax(logits, axis=-1)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    t = jnp.where(temperature > 0, temperature, 1.0)[:, None]
    scaled = logits / t
    # One descending sort serves both top-k and top-p.
    sorted_logits = jnp.sort(scaled, axis=-1)[:, ::-1]
    k = jnp.where((top_k <= 0) | (top_k > vocab), vocab, top_k)
    kth = jnp.take_along_axis(sorted_logits, (k - 1)[:, None], axis=-1)
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (always at least the first token).
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    keep_sorted = mass_before < top_p[:, None]
    n_keep = jnp.sum(keep_sorted, axis=-1)
    pth = jnp.take_along_axis(sorted_logits, (jnp.maximum(n_keep, 1) - 1)[:, None], axis=-1)
    threshold = jnp.maximum(kth, pth)
    masked = jnp.where(scaled >= threshold, scaled, -jnp.inf)

    keys = jax.vmap(_row_key)(seeds.astype(jnp.uint32), token_index.astype(jnp.uint32))
    drawn = jax.vmap(lambda key, row: jax.random.categorical(key, row))(keys, masked)
    tokens = jnp.where(temperature > 0, drawn.astype(jnp.int32), greedy)
    chosen_logprob = jnp.take_along_axis(logprobs_all, tokens[:, None], axis=-1)[:, 0]
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
