"""Scheduler overhead benchmark (mock runner, no model): what scripts/scheduler_bench.py runs.

Two measurements per preset, both from the scheduler's own clocks (time inside schedule() and
update_from_output(), perf_counter_ns):
- steady state: `n` requests running (decoding, with the arrivals that replace finished ones
  being prefilled) and the waiting queue topped up to `num_waiting` every step; microseconds
  per step and per scheduled request-step, over `measure_steps` steps after the running set
  has filled.
- lifetime: a trace of `trace_requests` requests with `trace_output_len`-token outputs, run to
  the end; scheduler milliseconds per request over its whole life.
"""
from __future__ import annotations

import gc
import random

from llmserve.core.request import Request
from llmserve.core.scheduler import PRESETS, SchedulerConfig, create_scheduler
from llmserve.runner.mock_runner import MockRunner
from llmserve.sampling_params import SamplingParams

MAX_MODEL_LEN = 512
BLOCK_SIZE = 16


def _config(preset: str, max_running: int, **kw) -> SchedulerConfig:
    blocks = max_running * (MAX_MODEL_LEN // BLOCK_SIZE) + 64
    return SchedulerConfig.for_policy(
        preset, max_num_seqs=max_running, block_size=BLOCK_SIZE, num_kv_blocks=blocks,
        max_model_len=MAX_MODEL_LEN,
        max_num_batched_tokens=max(2 * max_running + 1024, MAX_MODEL_LEN),
        static_batch_size=max_running, **kw)


class _Source:
    """Requests with prompts of 8-64 tokens and outputs of out_lo-out_hi tokens (ignore_eos)."""

    def __init__(self, seed: int, out_lo: int, out_hi: int):
        self.rnd = random.Random(seed)
        self.n = 0
        self.out = (out_lo, out_hi)

    def make(self, now: float) -> Request:
        r = self.rnd
        i = self.n
        self.n += 1
        prompt = [r.randrange(1, 30000) for _ in range(r.randint(8, 64))]
        sp = SamplingParams(max_tokens=r.randint(*self.out), ignore_eos=True, seed=i)
        return Request(str(i), prompt, sp, arrival_time=now)


def steady_state(preset: str, num_running: int, num_waiting: int = 10_000,
                 measure_steps: int = 50, seed: int = 0) -> dict:
    sched = create_scheduler(_config(preset, num_running))
    src = _Source(seed, 100, 300)
    runner = MockRunner(vocab_size=32000)
    now = 0.0
    for _ in range(num_running + num_waiting):
        sched.add_request(src.make(now))
    steps = sched_ns = req_steps = 0
    warm = 0
    while steps < measure_steps:
        st = sched.stats
        before = st.schedule_ns + st.update_ns
        out = sched.schedule(now)
        res = runner.execute(out)
        now += 0.01
        sched.update_from_output(out, res, now)
        runner.steps.clear()
        if sched.num_running >= 0.9 * num_running or warm > 2000:
            steps += 1
            sched_ns += st.schedule_ns + st.update_ns - before
            req_steps += len(out.scheduled)
        else:
            warm += 1
        while sched.num_waiting < num_waiting:
            sched.add_request(src.make(now))
    return {"preset": preset, "num_running": num_running, "num_waiting": num_waiting,
            "steps": steps, "us_per_step": sched_ns / steps / 1e3,
            "us_per_request_step": sched_ns / max(1, req_steps) / 1e3,
            "mean_scheduled_per_step": req_steps / steps}


def lifetime(preset: str, num_requests: int = 2000, output_len: int = 200,
             max_running: int = 256, seed: int = 0) -> dict:
    sched = create_scheduler(_config(preset, max_running))
    src = _Source(seed, output_len, output_len)
    for _ in range(num_requests):
        sched.add_request(src.make(0.0))
    runner = MockRunner(vocab_size=32000)
    now = 0.0
    while sched.has_unfinished():
        out = sched.schedule(now)
        res = runner.execute(out)
        now += 0.01
        sched.update_from_output(out, res, now)
        runner.steps.clear()
    st = sched.stats
    return {"preset": preset, "num_requests": num_requests, "output_len": output_len,
            "max_running": max_running, "steps": st.num_steps,
            "ms_per_request": st.scheduler_ns / num_requests / 1e6,
            "us_per_step": st.scheduler_ns / st.num_steps / 1e3}


def parse_sizes(s: str) -> list[int]:
    """config `sizes` ("64,256,...") -> [64, 256, ...], or ValueError naming the field."""
    try:
        sizes = [int(x) for x in str(s).replace(" ", "").split(",") if x]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be comma-separated ints >= 1 (running requests per "
                         f"measurement), got {s!r}")
    return sizes


def run(presets=PRESETS, sizes=(64, 256, 1024, 4096), num_waiting: int = 10_000,
        measure_steps: int = 50, trace_requests: int = 2000, trace_output_len: int = 200,
        log=print, disable_gc: bool = False) -> dict:
    """disable_gc: measure with Python's cyclic garbage collector off. Its full collections
    scan every live object, so their cost grows with the number of live requests; with it off
    the scheduler's own cost per request-step is what remains."""
    was = gc.isenabled()
    if disable_gc:
        gc.disable()
    try:
        return _run(presets, sizes, num_waiting, measure_steps, trace_requests,
                    trace_output_len, log)
    finally:
        if was:
            gc.enable()


def _run(presets, sizes, num_waiting, measure_steps, trace_requests, trace_output_len, log):
    rows, life = [], []
    for p in presets:
        for n in sizes:
            r = steady_state(p, n, num_waiting, measure_steps)
            log(f"{p:>10} running={n:5d}: {r['us_per_step']:9.1f} us/step "
                f"{r['us_per_request_step']:6.2f} us/request-step")
            rows.append(r)
        lr = lifetime(p, trace_requests, trace_output_len)
        log(f"{p:>10} lifetime: {lr['ms_per_request']:.3f} ms/request")
        life.append(lr)
    return {"steady_state": rows, "lifetime": life}


def table(results: dict) -> str:
    rows = results["steady_state"]
    sizes = sorted({r["num_running"] for r in rows})
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    by = {(r["preset"], r["num_running"]): r for r in rows}
    life = {r["preset"]: r for r in results["lifetime"]}
    head = ["preset"] + [f"us/step @{n}" for n in sizes] + \
        [f"us/req-step @{n}" for n in sizes] + ["growth", "ms/request (life)"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for p in presets:
        per = [by[(p, n)]["us_per_request_step"] for n in sizes]
        cells = [p] + [f"{by[(p, n)]['us_per_step']:.0f}" for n in sizes] + \
            [f"{v:.2f}" for v in per] + [f"{per[-1] / per[0]:.2f}x",
                                         f"{life[p]['ms_per_request']:.3f}" if p in life else "-"]
        lines.append(" | ".join(cells))
    return "\n".join(lines)
