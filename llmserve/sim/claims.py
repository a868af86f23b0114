"""The seed's open claims, measured: what scripts/claims_bench.py runs (issue 17).

Each experiment returns rows (dicts) for one table; scripts/claims_bench.py prints them and
writes JSON. The simulated ones replay a workload on the simulator (the real scheduler, the
cost model's step times on a virtual clock: deterministic) at a real shape; the scheduler
overhead is the real scheduler code on the wall clock (core/sched_bench.py, mock runner).

- variance: outputs log-normal with the same mean and CV 0.3 .. 2.5 (prompts and arrivals
  identical across CVs), static / continuous / chunked / predictive (oracle, noisy).
- kv: a KV pool small enough that paged allocation preempts; paged vs reserve_max vs
  reserve_predicted, and reserve_predicted with the noisy oracle at 0-100% error. Requests
  ask for `client_max_tokens` (replay.py) and end at their trace length, as real clients do:
  with max_tokens = the trace length reserve_max would be an exact reservation.
- fragmentation: reserved-but-unused KV of paged vs reserve_max, from the kv runs.
- noise_floor: how well any predictor can do on CASTILLO: each sample against the mean of the
  prompt's other samples (no model), beside the ensemble's measured error.
- overhead: scheduler time per request over its life and per scheduled request-step.
- budget: the token-budget sweep with E2E latency beside TTFT and TPOT.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time

import numpy as np

from llmserve import bench
from llmserve.metrics.summary import summarize
from llmserve.workload import WorkloadRequest, synthetic
from llmserve.workload.replay import replay

log = logging.getLogger(__name__)
EXPERIMENTS = ("variance", "kv", "fragmentation", "noise_floor", "overhead", "budget")
METRICS = ("output_throughput_tok_s", "e2e_p50_s", "e2e_p99_s", "ttft_p50_s", "ttft_p99_s",
           "tpot_p50_s", "tpot_p99_s", "kv_fragmentation", "preemptions",
           "kv_utilization_mean")


def lognormal_outputs(n: int, mean: float, cv: float, rng: np.random.Generator,
                      hi: int) -> np.ndarray:
    """n log-normal lengths of the given mean and coefficient of variation, in [1, hi]."""
    if mean < 1 or cv <= 0:
        raise ValueError(f"output mean must be >= 1 and cv > 0, got {mean}, {cv}")
    sigma = float(np.sqrt(np.log1p(cv * cv)))
    mu = float(np.log(mean) - sigma * sigma / 2)
    return np.clip(np.round(rng.lognormal(mu, sigma, n)), 1, hi).astype(np.int64)


def variance_workload(n: int, rate: float, mean: float, cv: float, seed: int,
                      max_model_len: int, prompt_max: int) -> list[WorkloadRequest]:
    """Poisson arrivals and Azure-conversation prompts (capped at prompt_max) from `seed`,
    the same for every cv; only the outputs change with cv (their own seeded stream)."""
    base = np.random.default_rng(seed)
    t = synthetic.poisson_arrivals(n, rate, base)
    p = synthetic.lognormal_lengths(n, base, *synthetic.AZURE_CONV_LOG_PROMPT, 2, prompt_max)
    o = lognormal_outputs(n, mean, cv, np.random.default_rng([seed, 1]),
                          max_model_len - prompt_max)
    return [WorkloadRequest(float(a), int(x), int(y)) for a, x, y in zip(t, p, o)]


def run_one(setup: bench.Setup, policy: str, workload: list, *, label: str = "",
            client_max_tokens: int | None = None, **engine_over) -> dict:
    """One replay of `workload` under `policy` on the setup's simulator; the metrics row."""
    cfg = setup.cfg
    if "num_kv_blocks" in engine_over:     # the setup sets the pool of every engine it makes
        setup = dataclasses.replace(setup, num_kv_blocks=engine_over.pop("num_kv_blocks"))
    ec = setup.engine_config(policy, **engine_over)
    eng = setup.make_engine(ec)
    res = replay(eng, workload, seed=bench._g(cfg, "workload.seed", 0), label=label or policy,
                 client_max_tokens=client_max_tokens)
    m = summarize(res, slo_ttft_s=bench._g(cfg, "slo.ttft_s", 2.0),
                  slo_tpot_s=bench._g(cfg, "slo.tpot_s", 0.1),
                  num_kv_blocks=setup.num_kv_blocks,
                  hardware=setup.hardware)
    row = {k: m.get(k) for k in METRICS}
    row.update(num_finished=m["num_finished"], num_requests=m["num_requests"])
    log.info("%-60s %.0f tok/s, E2E p50 %.2fs p99 %.2fs, preemptions %d", label or policy,
             row["output_throughput_tok_s"], row["e2e_p50_s"] or np.nan,
             row["e2e_p99_s"] or np.nan, row["preemptions"])
    return row


def _policy_list(s) -> list[tuple[str, str]]:
    """'name=spec;name=spec' -> [(name, spec)] (specs hold commas and '+')."""
    out = []
    for item in str(s).split(";"):
        if item.strip():
            name, eq, spec = item.partition("=")
            if not eq or not spec.strip():
                raise ValueError(f"policy list item {item!r} must be written name=policy_spec")
            out.append((name.strip(), spec.strip()))
    return out


def exp_variance(setup: bench.Setup, c) -> list[dict]:
    rows = []
    max_len = setup.cfg["engine"]["max_model_len"]
    for cv in bench._floats(c.cvs, "variance.cvs"):
        wl = variance_workload(c.num_requests, c.rate, c.output_mean, cv, c.seed, max_len,
                               c.prompt_max)
        out = np.array([w.output_len for w in wl], float)
        for name, pol in _policy_list(c.policies):
            r = run_one(setup, pol, wl, label=f"cv {cv:g} {name}")
            r.update(cv=cv, policy=name, output_mean=float(out.mean()),
                     output_cv=float(out.std() / out.mean()))
            rows.append(r)
    return rows


def _trace(setup: bench.Setup, c) -> list:
    wl = sorted(setup.workload, key=lambda w: w.arrival_s)[:c.num_requests]
    t0 = wl[0].arrival_s
    return [dataclasses.replace(w, arrival_s=(w.arrival_s - t0) / c.rate_scale) for w in wl]


def exp_kv(setup: bench.Setup, c) -> list[dict]:
    """Small pool: each policy at client_max_tokens, then the noisy oracle sweep."""
    wl = _trace(setup, c)
    rows = []
    for name, pol in _policy_list(c.policies):
        r = run_one(setup, pol, wl, label=f"kv {name}", client_max_tokens=c.client_max_tokens,
                    num_kv_blocks=c.num_kv_blocks)
        r.update(policy=name, rel_error=None)
        rows.append(r)
    for e in bench._floats(c.noise, "kv.noise"):
        pol = f"{c.noise_policy}+predictor=noisy_oracle:{e:g}:{c.seed}"
        r = run_one(setup, pol, wl, label=f"kv noisy {e:g}",
                    client_max_tokens=c.client_max_tokens, num_kv_blocks=c.num_kv_blocks)
        r.update(policy=f"reserve_predicted, noisy_oracle {e:.0%}", rel_error=e)
        rows.append(r)
    return rows


def exp_fragmentation(setup: bench.Setup, c) -> list[dict]:
    """Paged vs reserve_max at each client max_tokens, the default (large) pool."""
    wl = _trace(setup, c)
    rows = []
    for cap in [int(x) for x in bench._floats(c.client_max_tokens, "fragmentation.caps")]:
        for name, pol in _policy_list(c.policies):
            r = run_one(setup, pol, wl, label=f"frag cap {cap} {name}",
                        client_max_tokens=cap or None)
            r.update(policy=name, client_max_tokens=cap)
            rows.append(r)
    return rows


def noise_floor(records: list[list[int]]) -> dict:
    """Errors of predicting each sampled length by the mean of its prompt's other samples
    (the per-sample floor), and of the mean of half the samples against the mean of the
    other half (how well a prompt's mean length is even defined by 10 samples)."""
    rel, ab, half = [], [], []
    for s in records:
        s = np.asarray(s, float)
        if s.size < 2:
            continue
        others = (s.sum() - s) / (s.size - 1)
        rel.append(np.abs(others - s) / s)
        ab.append(np.abs(others - s))
        if s.size >= 4:
            k = s.size // 2
            half.append(abs(s[:k].mean() - s[k:].mean()) / s[k:].mean())
    rel, ab = np.concatenate(rel), np.concatenate(ab)
    return {"prompts": len(records), "samples": int(rel.size),
            "median_rel_error": float(np.median(rel)), "mean_rel_error": float(rel.mean()),
            "mae_tokens": float(ab.mean()),
            "split_half_median_rel_error": float(np.median(half)) if half else None}


def exp_noise_floor(c) -> list[dict]:
    from llmserve.data import registry
    from llmserve.workload.loaders import CASTILLO_CAP, _json_records
    rows = []
    every = []
    for name in [x.strip() for x in c.datasets.split(",") if x.strip()]:
        recs = []
        for rec, _ in _json_records(registry.dataset_path(name)):
            ok = [int(s) for s in rec.get("output_sizes", []) if 0 < int(s) < CASTILLO_CAP]
            if len(ok) >= 2:
                recs.append(ok)
        every += recs
        rows.append({"dataset": name, **noise_floor(recs)})
    rows.append({"dataset": "all", **noise_floor(every)})
    return rows


def exp_overhead(c) -> list[dict]:
    from llmserve.core import sched_bench
    presets = [p for p in c.presets.split(",") if p]
    res = sched_bench.run(presets, sched_bench.parse_sizes(c.sizes), c.num_waiting,
                          c.measure_steps, c.trace_requests, c.trace_output_len,
                          log=log.info)
    life = {r["preset"]: r["ms_per_request"] for r in res["lifetime"]}
    # The same lifetime run on this process's CPU clock: on a shared machine the wall clock
    # counts the time other processes held the core; CPU time does not (it includes the
    # mock runner's own work, so it bounds the scheduler's from above).
    cpu = {}
    for p in presets:
        t = time.process_time()
        sched_bench.lifetime(p, c.trace_requests, c.trace_output_len)
        cpu[p] = (time.process_time() - t) / c.trace_requests * 1e3
    return [{"preset": s["preset"], "running": s["num_running"],
             "us_per_request_step": s["us_per_request_step"], "us_per_step": s["us_per_step"],
             "ms_per_request_lifetime": life[s["preset"]],
             "cpu_ms_per_request_lifetime": cpu[s["preset"]],
             "load_average": os.getloadavg()[0]} for s in res["steady_state"]]


def exp_budget(setup: bench.Setup, c) -> list[dict]:
    wl = _trace(setup, c)
    rows = []
    for name, pol in _policy_list(c.policies):
        for b in [int(x) for x in bench._floats(c.budgets, "budget.budgets")]:
            r = run_one(setup, pol, wl, label=f"budget {b} {name}", max_num_batched_tokens=b)
            r.update(policy=name, budget=b)
            rows.append(r)
    return rows
