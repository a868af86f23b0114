"""Synthetic workloads: no data files needed, everything drawn from one seed.

Arrivals: Poisson (exponential gaps) or Gamma (gaps with a given coefficient of variation;
cv > 1 is bursty). Lengths: a log-normal fitted to the Azure conversation trace, a
high-variance mix of short classification-style answers and long essays, or fixed. Shared
prefixes: N system prompts, each request's prompt = one of them + its own suffix.
"""
from __future__ import annotations

import numpy as np

from llmserve.workload import WorkloadRequest

# Mean and std of log(tokens) over the 19,366 requests of the Azure LLM inference trace 2023,
# conversation service (azure_conv_2023.csv); tests/workload checks them against the file.
AZURE_CONV_LOG_PROMPT = (6.6333, 0.9852)
AZURE_CONV_LOG_OUTPUT = (5.0190, 0.8590)
# The trace's own clipping: outputs are 7..1000 tokens, prompts 2..14050.
AZURE_CONV_OUTPUT_RANGE = (7, 1000)
AZURE_CONV_PROMPT_RANGE = (2, 14050)

ARRIVALS = ("poisson", "gamma")
LENGTHS = ("azure_lognormal", "high_variance", "fixed")


def poisson_arrivals(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """n arrival times (s) of a Poisson process of `rate` requests/s, the first at 0."""
    if rate <= 0:
        raise ValueError(f"workload.rate must be > 0 requests/s, got {rate}")
    gaps = rng.exponential(1.0 / rate, n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def gamma_arrivals(n: int, rate: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    """Gamma-distributed gaps with mean 1/rate and coefficient of variation cv (1 = Poisson)."""
    if rate <= 0:
        raise ValueError(f"workload.rate must be > 0 requests/s, got {rate}")
    if cv <= 0:
        raise ValueError(f"workload.burstiness_cv must be > 0, got {cv}")
    shape = 1.0 / cv**2
    gaps = rng.gamma(shape, 1.0 / (rate * shape), n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def lognormal_lengths(n, rng, mu, sigma, lo, hi) -> np.ndarray:
    return np.clip(np.round(rng.lognormal(mu, sigma, n)), lo, hi).astype(np.int64)


def sample_lengths(kind: str, n: int, rng: np.random.Generator, *,
                   prompt_len: tuple[int, int] = (16, 256), short_output: tuple[int, int] = (2, 16),
                   long_output: tuple[int, int] = (256, 1024), short_frac: float = 0.7,
                   fixed_prompt_len: int = 128, fixed_output_len: int = 128,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(prompt lengths, output lengths) of n requests.

    high_variance: prompts uniform in `prompt_len`; a fraction `short_frac` of outputs uniform
    in `short_output` (classification-style answers), the rest log-uniform in `long_output`
    (essays). This is the workload where batching by length matters most.
    """
    if kind == "azure_lognormal":
        p = lognormal_lengths(n, rng, *AZURE_CONV_LOG_PROMPT, *AZURE_CONV_PROMPT_RANGE)
        o = lognormal_lengths(n, rng, *AZURE_CONV_LOG_OUTPUT, *AZURE_CONV_OUTPUT_RANGE)
        return p, o
    if kind == "high_variance":
        for name, (lo, hi) in (("prompt_len", prompt_len), ("short_output", short_output),
                               ("long_output", long_output)):
            if not 1 <= lo <= hi:
                raise ValueError(f"workload.{name} must be a range 1 <= lo <= hi, got {(lo, hi)}")
        if not 0 <= short_frac <= 1:
            raise ValueError(f"workload.short_frac must be in [0, 1], got {short_frac}")
        p = rng.integers(prompt_len[0], prompt_len[1] + 1, n)
        short = rng.random(n) < short_frac
        o_short = rng.integers(short_output[0], short_output[1] + 1, n)
        o_long = np.round(np.exp(rng.uniform(np.log(long_output[0]), np.log(long_output[1]),
                                              n))).astype(np.int64)
        return p.astype(np.int64), np.where(short, o_short, o_long).astype(np.int64)
    if kind == "fixed":
        if fixed_prompt_len < 1 or fixed_output_len < 1:
            raise ValueError("workload.fixed_prompt_len and fixed_output_len must be >= 1")
        return (np.full(n, fixed_prompt_len, np.int64), np.full(n, fixed_output_len, np.int64))
    raise ValueError(f"workload.lengths must be one of {LENGTHS}, got {kind!r}")


def synthetic_workload(num_requests: int, rate: float, *, arrival: str = "poisson",
                       burstiness_cv: float = 1.0, lengths: str = "high_variance", seed: int = 0,
                       max_model_len: int | None = None, num_prefixes: int = 0,
                       prefix_len: int = 0, vocab_size: int = 256,
                       **length_kw) -> list[WorkloadRequest]:
    """A seeded workload. With num_prefixes > 0 every prompt starts with one of num_prefixes
    shared system prompts of prefix_len tokens (token ids drawn below vocab_size), so prefix
    caching has something to hit; otherwise token ids are left to the replay."""
    if num_requests < 1:
        raise ValueError(f"workload.num_requests must be >= 1, got {num_requests}")
    rng = np.random.default_rng(seed)
    if arrival == "poisson":
        t = poisson_arrivals(num_requests, rate, rng)
    elif arrival == "gamma":
        t = gamma_arrivals(num_requests, rate, burstiness_cv, rng)
    else:
        raise ValueError(f"workload.arrival must be one of {ARRIVALS}, got {arrival!r}")
    p, o = sample_lengths(lengths, num_requests, rng, **length_kw)
    if max_model_len is not None:
        o = np.minimum(o, max_model_len - 1)
        p = np.minimum(p, max_model_len - o)
    reqs = [WorkloadRequest(float(a), int(pl), int(ol)) for a, pl, ol in zip(t, p, o)]
    if num_prefixes > 0:
        if prefix_len < 1:
            raise ValueError(f"workload.prefix_len must be >= 1 with prefixes, got {prefix_len}")
        prefixes = rng.integers(0, vocab_size, (num_prefixes, prefix_len))
        which = rng.integers(0, num_prefixes, num_requests)
        for r, k in zip(reqs, which):
            suffix = rng.integers(0, vocab_size, r.prompt_len).tolist()
            ids = prefixes[k].tolist() + suffix
            if max_model_len is not None:
                ids = ids[:max_model_len - r.output_len]
            r.prompt_token_ids = ids
            r.prompt_len = len(ids)
    return reqs


def shared_prefix_workload(num_requests: int, rate: float, *, num_prefixes: int = 20,
                           prefix_len: int = 1024, question_len: tuple[int, int] = (16, 128),
                           popularity_zipf: float = 0.0, seed: int = 0, vocab_size: int = 32000,
                           max_model_len: int | None = None) -> list[WorkloadRequest]:
    """num_prefixes long system prompts x many short questions (Poisson arrivals): each prompt
    is one system prompt + a fresh question (uniform length in question_len); outputs follow
    the Azure conversation trace's log-normal. Prompt k is chosen with probability
    ~ 1 / (k + 1)^popularity_zipf (0: uniform), as a few assistants usually dominate traffic."""
    if num_requests < 1 or num_prefixes < 1 or prefix_len < 1:
        raise ValueError(f"workload: num_requests, num_prefixes and prefix_len must be >= 1, "
                         f"got {num_requests}, {num_prefixes}, {prefix_len}")
    lo, hi = question_len
    if not 1 <= lo <= hi:
        raise ValueError(f"workload.question_len must be a range 1 <= lo <= hi, got {lo, hi}")
    if popularity_zipf < 0:
        raise ValueError(f"workload.popularity_zipf must be >= 0, got {popularity_zipf}")
    rng = np.random.default_rng(seed)
    t = poisson_arrivals(num_requests, rate, rng)
    prefixes = rng.integers(0, vocab_size, (num_prefixes, prefix_len))
    w = 1.0 / np.arange(1, num_prefixes + 1) ** popularity_zipf
    which = rng.choice(num_prefixes, num_requests, p=w / w.sum())
    qlen = rng.integers(lo, hi + 1, num_requests)
    out = lognormal_lengths(num_requests, rng, *AZURE_CONV_LOG_OUTPUT, *AZURE_CONV_OUTPUT_RANGE)
    reqs = []
    for a, k, q, o in zip(t, which, qlen, out):
        ids = prefixes[k].tolist() + rng.integers(0, vocab_size, q).tolist()
        o = int(o)
        if max_model_len is not None:
            o = min(o, max_model_len // 2)
            ids = ids[:max_model_len - o]
        reqs.append(WorkloadRequest(float(a), len(ids), o, ids))
    return reqs


def resampled_workload(source: list[WorkloadRequest], num_requests: int, rate: float, *,
                       seed: int = 0) -> list[WorkloadRequest]:
    """A source's (prompt, output) length pairs drawn with replacement, Poisson arrivals at
    `rate`: a trace's length distribution at any rate and size (token ids left to the replay)."""
    if not source:
        raise ValueError("resampled_workload: the source workload is empty")
    rng = np.random.default_rng(seed)
    t = poisson_arrivals(num_requests, rate, rng)
    pick = rng.integers(0, len(source), num_requests)
    return [WorkloadRequest(float(a), source[j].prompt_len, source[j].output_len)
            for a, j in zip(t, pick)]
