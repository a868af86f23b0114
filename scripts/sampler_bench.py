"""sample()'s jitted cost per step: the sort-based sampler (kept below as the baseline) against
llmserve.model.sampling.sample, per vocabulary, batch size and mix of sampling parameters.

  python scripts/sampler_bench.py --config=configs/sampler_bench.py --workdir=results/sampler_bench

Each cell times one jitted call on a [batch, vocab] float32 logits array already on the
device (median of config.repeats after a warm call), with the static candidate cap the runner
would pick for that batch. Prints a table and writes --workdir/sampler_bench.json.
"""
from __future__ import annotations

import functools
import json
import os
import statistics
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax
import jax.numpy as jnp
import numpy as np

from llmserve.model.sampling import candidate_cap, sample

_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs/sampler_bench.py"),
                                          "benchmark config")
_WORKDIR = flags.DEFINE_string("workdir", "results/sampler_bench", "where results JSON is written")

KINDS = ("greedy", "temperature", "top_k", "top_p", "top_p_flat", "mixed")
# (temperature, top_k, top_p) of each kind; mixed cycles through its list row by row.
PARAMS = {"greedy": [(0.0, -1, 1.0)], "temperature": [(0.8, -1, 1.0)],
          "top_k": [(0.8, 50, 1.0)], "top_p": [(0.8, -1, 0.9)], "top_p_flat": [(0.8, -1, 0.9)],
          "mixed": [(0.0, -1, 1.0), (0.8, -1, 1.0), (0.8, 50, 1.0), (0.8, -1, 0.9),
                    (0.7, 40, 0.95)]}


def sort_sample(logits, temperature, top_k, top_p, seeds, token_index):
    """The sampler before issue 19 (one descending sort of every row serves top-k and top-p),
    verbatim: the baseline."""
    vocab = logits.shape[-1]
    logprobs_all = jax.nn.log_softmax(logits, axis=-1)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    t = jnp.where(temperature > 0, temperature, 1.0)[:, None]
    scaled = logits / t
    sorted_logits = jnp.sort(scaled, axis=-1)[:, ::-1]
    k = jnp.where((top_k <= 0) | (top_k > vocab), vocab, top_k)
    kth = jnp.take_along_axis(sorted_logits, (k - 1)[:, None], axis=-1)
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    keep_sorted = mass_before < top_p[:, None]
    n_keep = jnp.sum(keep_sorted, axis=-1)
    pth = jnp.take_along_axis(sorted_logits, (jnp.maximum(n_keep, 1) - 1)[:, None], axis=-1)
    threshold = jnp.maximum(kth, pth)
    masked = jnp.where(scaled >= threshold, scaled, -jnp.inf)
    keys = jax.vmap(lambda s, i: jax.random.fold_in(jax.random.PRNGKey(s), i))(
        seeds.astype(jnp.uint32), token_index.astype(jnp.uint32))
    drawn = jax.vmap(lambda key, row: jax.random.categorical(key, row))(keys, masked)
    tokens = jnp.where(temperature > 0, drawn.astype(jnp.int32), greedy)
    chosen_logprob = jnp.take_along_axis(logprobs_all, tokens[:, None], axis=-1)[:, 0]
    return tokens, chosen_logprob


def make_logits(rng, rows: int, vocab: int, flat: bool, c) -> np.ndarray:
    if flat:
        return (rng.normal(size=(rows, vocab)) * c.flat_std).astype(np.float32)
    base = -c.zipf_exponent * np.log(np.arange(1, vocab + 1, dtype=np.float64))
    return np.stack([rng.permutation(base) for _ in range(rows)]).astype(np.float32)


def nucleus_size(logits: np.ndarray, temperature: float, top_p: float) -> int:
    z = np.sort(logits.astype(np.float64) / temperature)[::-1]
    p = np.exp(z - z.max())
    p /= p.sum()
    return int(np.sum(np.cumsum(p) - p < top_p))


def timed(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def parse_ints(field: str, text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        vals = []
    if not vals or min(vals) < 1:
        raise app.UsageError(f"{field} must be comma-separated ints >= 1, got {text!r}")
    return vals


def main(argv):
    del argv
    c = _CONFIG.value
    vocabs, batches = parse_ints("vocabs", c.vocabs), parse_ints("batches", c.batches)
    kinds = [k.strip() for k in c.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise app.UsageError(f"kinds must be a comma-separated subset of {KINDS}, got {c.kinds!r}")
    os.makedirs(_WORKDIR.value, exist_ok=True)
    rng = np.random.default_rng(c.seed)
    new_fn = jax.jit(sample, static_argnames="cap")
    old_fn = jax.jit(sort_sample)
    cells = []
    for vocab in vocabs:
        for rows in batches:
            logits = {flat: make_logits(rng, rows, vocab, flat, c) for flat in (False, True)}
            old_s = None
            for kind in kinds:
                ps = [PARAMS[kind][i % len(PARAMS[kind])] for i in range(rows)]
                temp, top_k, top_p = (np.asarray(x) for x in zip(*ps))
                cap = candidate_cap(temp, top_k, vocab)
                x = jnp.asarray(logits[kind == "top_p_flat"])
                args = (x, jnp.asarray(temp, jnp.float32), jnp.asarray(top_k, jnp.int32),
                        jnp.asarray(top_p, jnp.float32),
                        jnp.asarray(rng.integers(0, 2**32, rows), jnp.uint32),
                        jnp.arange(rows, dtype=jnp.int32))
                new_s = timed(functools.partial(new_fn, cap=cap), args, c.repeats)
                if old_s is None:
                    old_s = timed(old_fn, args, c.old_repeats)
                nucleus = (nucleus_size(np.asarray(x[0]), 0.8, 0.9)
                           if kind in ("top_p", "top_p_flat") else None)
                cell = {"vocab": vocab, "batch": rows, "kind": kind, "cap": cap,
                        "old_ms": old_s * 1e3, "new_ms": new_s * 1e3, "speedup": old_s / new_s,
                        "nucleus_row0": nucleus}
                cells.append(cell)
                logging.info("V=%d S=%d %s: old %.2f ms, new %.2f ms (%.1fx)", vocab, rows,
                             kind, cell["old_ms"], cell["new_ms"], cell["speedup"])
    results = {"config": c.to_dict(), "device": str(jax.devices()[0]),
               "machine": {"cpus": os.cpu_count(), "loadavg_end": os.getloadavg()},
               "cells": cells}
    print_table(results)
    out = os.path.join(_WORKDIR.value, "sampler_bench.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {out}")


def print_table(results: dict) -> None:
    print(f"\nsampler_bench on {results['device']} ({results['machine']['cpus']} CPUs): "
          "jitted sample() per step, median ms; old = sort-based sampler (same work for every "
          "mix, timed once per vocab x batch)")
    hdr = (f"{'vocab':>7} {'batch':>5} {'kind':<11} {'cap':>5} {'old ms':>9} {'new ms':>8} "
           f"{'speedup':>8} {'nucleus':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in results["cells"]:
        nuc = "" if r["nucleus_row0"] is None else str(r["nucleus_row0"])
        print(f"{r['vocab']:>7} {r['batch']:>5} {r['kind']:<11} {r['cap']:>5} "
              f"{r['old_ms']:>9.2f} {r['new_ms']:>8.2f} {r['speedup']:>7.1f}x {nuc:>8}")
    print("nucleus: tokens in row 0's top_p=0.9 nucleus at T=0.8 (above the cap, the row is "
          "resolved by the whole-row threshold search)")


if __name__ == "__main__":
    app.run(main)
