"""Replay a workload into an LLMEngine on a wall clock (real runner) or a virtual clock (sim).

Arrivals are injected when the clock passes them, with their scheduled arrival time (so time
spent waiting behind a long step counts toward TTFT). On a VirtualClock the runner's
step_time_s advances time (StepRecorder does it between execute() and update_from_output()),
and an idle engine jumps to the next arrival; on the wall clock the driver sleeps instead.
The scheduler code is the same in both. Trace output lengths are honoured with `ignore_eos`
+ `max_tokens`, as serving benchmarks replay traces.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import math
import time

import numpy as np

from llmserve.core.request import RequestStatus
from llmserve.metrics.collect import RequestRecords, StepRecorder, StepRecords
from llmserve.sampling_params import SamplingParams
from llmserve.workload import WorkloadRequest

log = logging.getLogger(__name__)


class VirtualClock:
    """A clock that moves only when told: engine(clock=VirtualClock())."""
    __slots__ = ("t",)

    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclasses.dataclass
class ReplayResult:
    requests: dict            # RequestRecords.arrays()
    steps: dict               # StepRecords.arrays()
    start: float              # clock time of the workload's t = 0
    end: float                # clock time the run stopped
    num_requests: int         # requests offered (after the cap)
    num_rejected: int         # refused at add_request (too long for the pool, ...)
    num_aborted: int          # unfinished when the time cap hit
    num_truncated: int        # prompts cut to fit max_model_len
    virtual: bool
    wall_s: float             # real seconds the replay took
    scheduler_ns: int         # time inside schedule() + update_from_output()
    scheduler_steps: int
    preemptions: int


def _set_true_length(req, n: int) -> None:
    """Hand the trace's true output length to the request, for the oracle predictor."""
    for attr in ("true_num_output_tokens", "target_num_output_tokens"):
        if hasattr(type(req), attr) or attr in getattr(type(req), "__slots__", ()):
            setattr(req, attr, n)
            return


def _steps_until(gap: float, dt: float, most: int = 1024) -> int:
    """Steps worth planning for a decode run: about those that fit before the next arrival,
    judged by the last run's last step time (a shorter plan only means another run after
    it; the last step of all may be a long prefill)."""
    if dt <= 0 or gap >= most * dt:
        return most
    return int(gap / dt * 1.25) + 2


def _decode_run(engine, runner, recorder, run, clock, kv_sample_every, until,
                may_start) -> tuple[list, float]:
    """Take the steps of a planned decode run that start before the next arrival (or the
    time cap), with every record a step-by-step run leaves: the scheduler's (apply), the
    recorder's rows and KV samples, the engine's step times, the clock. Returns the
    requests that finished, in order, and the last step's time."""
    starts, dts, ends, counts = runner.decode_run(run, clock.t, until, may_start)
    finished, per_step = engine.scheduler.apply_decode_run(run, starts, ends)
    bs = engine.scheduler.config.block_size
    records = recorder.records
    rows = records.rows
    before = len(rows)
    rows += [(starts[j], dts[j], per_step[j][3], 0, c[4], per_step[j][0], 0, c[0] + c[2],
              c[1] + c[3]) for j, c in enumerate(counts)]
    engine.step_times.extend([e - s for s, e in zip(starts, ends)])
    # recorder.sample_kv() after every kv_sample_every-th step record.
    for j in range(-(before + 1) % kv_sample_every, len(counts), kv_sample_every):
        _, blocks, computed, _ = per_step[j]
        records.kv_reserved_slots.append(blocks * bs)
        records.kv_used_slots.append(min(computed, blocks * bs))
    clock.t = ends[-1]
    if finished and engine._trace_log is not None:
        engine._log_finished(finished)
    return finished, dts[-1]


def prepare(workload: list[WorkloadRequest], *, rate_scale: float = 1.0,
            max_requests: int | None = None, max_model_len: int | None = None
            ) -> tuple[list[WorkloadRequest], int]:
    """Sorted, capped, rate-scaled copies; prompts cut so prompt + output fits max_model_len.
    Returns (requests, number truncated)."""
    if rate_scale <= 0:
        raise ValueError(f"workload.rate_scale must be > 0, got {rate_scale}")
    if max_requests is not None and max_requests < 1:
        raise ValueError(f"workload.num_requests must be >= 1, got {max_requests}")
    reqs = sorted(workload, key=lambda w: w.arrival_s)[:max_requests]
    if not reqs:
        raise ValueError("the workload has no requests")
    t0 = reqs[0].arrival_s
    out, cut = [], 0
    for w in reqs:
        p, o, ids = w.prompt_len, w.output_len, w.prompt_token_ids
        if max_model_len is not None and p + o > max_model_len:
            o = min(o, max_model_len - 1)
            p = max_model_len - o
            ids = ids[:p] if ids is not None else None
            cut += 1
        out.append(WorkloadRequest((w.arrival_s - t0) / rate_scale, p, o, ids, w.prompt_text))
    return out, cut


def replay(engine, workload: list[WorkloadRequest], *, rate_scale: float = 1.0,
           max_requests: int | None = None, time_limit_s: float | None = None, seed: int = 0,
           idle_tick_s: float = 1e-3, kv_sample_every: int = 8, counter=None,
           progress_every_s: float = 30.0, label: str = "",
           fast_decode: bool = True, client_max_tokens: int | None = None) -> ReplayResult:
    """Drive `workload` into `engine` until every request finished (or time_limit_s passed on
    the run's clock, when the rest is aborted). The engine's clock decides the mode: a
    VirtualClock is simulated time, anything else is the wall clock. fast_decode=False steps
    a simulation one step at a time even through runs of pure decode steps (the reference
    the fast path is tested against; the results are the same). client_max_tokens: the
    max_tokens each request asks for (at least its trace length, within max_model_len), so
    what reads max_tokens (KV reserve_max, a router) sees a client's bound; the request still
    ends at its trace length. None: max_tokens = the trace length."""
    if client_max_tokens is not None and (isinstance(client_max_tokens, bool) or not isinstance(
            client_max_tokens, int) or client_max_tokens < 1):
        raise ValueError(f"client_max_tokens must be an int >= 1, got {client_max_tokens!r}")
    clock = engine.clock
    virtual = isinstance(clock, VirtualClock)
    reqs, num_cut = prepare(workload, rate_scale=rate_scale, max_requests=max_requests,
                            max_model_len=engine.config.max_model_len)
    vocab = engine.model_config.vocab_size
    rng = np.random.default_rng(seed)
    sched = engine.scheduler
    steps = StepRecords()
    recorder = StepRecorder(engine.runner, sched, steps, clock if virtual else None, counter)
    inner_runner = engine.runner
    engine.runner = recorder
    records = RequestRecords()
    arrivals = [w.arrival_s for w in reqs]
    n = len(reqs)
    active: dict[str, object] = {}
    rejected = aborted = 0
    sched_ns0 = sched.stats.schedule_ns + sched.stats.update_ns
    steps0, pre0 = sched.stats.num_steps, sched.stats.num_preemptions
    wall0 = time.perf_counter()
    start = clock()
    # Absolute clock times, compared as such: start + a - start == a need not hold in floats.
    due = [start + a for a in arrivals]
    next_log = wall0 + progress_every_s

    def progress(arrived: int) -> None:
        log.info("%s t=%.1fs arrived %d/%d finished %d running %d waiting %d", label,
                 clock() - start, arrived, n, len(records.rows), sched.num_running,
                 sched.num_waiting)

    i = 0
    step_rows = steps.rows
    step_requests = engine.step_requests
    has_unfinished = sched.has_unfinished   # what engine.has_unfinished() returns
    finished = RequestStatus.PREEMPTED      # statuses above it are finished
    st = sched.stats
    # Runs of pure decode steps are applied at once (core/decode_run.py): identical results,
    # a fraction of the Python per step. Only on a virtual clock, with a runner that models
    # them (the SimRunner without padded buckets).
    decode_runs = (virtual and fast_decode and getattr(inner_runner, "can_run_decode", False)
                   and recorder._reuse_counts)
    filler = getattr(inner_runner, "filler_token_id", 0)
    in_time = None if time_limit_s is None else (lambda t: t - start < time_limit_s)
    run_dt = 0.0
    # A simulation allocates and keeps many long-lived objects (requests, token lists,
    # records) and creates no reference cycles worth collecting: the cyclic GC's passes over
    # them are pure overhead, so it is off while the virtual clock runs.
    gc_was_enabled = virtual and gc.isenabled()
    if gc_was_enabled:
        gc.freeze()
        gc.disable()
    try:
        while True:
            now = clock()
            elapsed = now - start
            if time_limit_s is not None and elapsed >= time_limit_s:
                break
            while i < n and due[i] <= now:
                w = reqs[i]
                ids = w.prompt_token_ids
                if ids is None:     # handed over as an array: the engine checks it in numpy
                    ids = rng.integers(0, vocab, w.prompt_len)
                rid = str(i)
                mt = w.output_len if client_max_tokens is None else max(w.output_len, min(
                    client_max_tokens, engine.config.max_model_len - w.prompt_len))
                try:
                    engine.add_request(ids, SamplingParams(max_tokens=mt, ignore_eos=True,
                                                           temperature=0.0),
                                       request_id=rid, arrival_time=due[i])
                except ValueError as e:
                    rejected += 1
                    log.warning("request %d rejected: %s", i, e)
                else:
                    req = sched.requests[rid]
                    if w.prompt_text is not None and req.prompt_text is None:
                        req.prompt_text = w.prompt_text
                    _set_true_length(req, w.output_len)
                    if mt != w.output_len:     # ends at its trace length, not max_tokens
                        req.max_num_tokens = req.num_prompt_tokens + w.output_len
                    active[rid] = req
                i += 1
            if has_unfinished():
                if decode_runs and (run := sched.plan_decode_run(
                        filler, _steps_until(due[i] - now if i < n else math.inf,
                                             run_dt))) is not None:
                    # Steps start before the next arrival and the time cap, as at the top
                    # of this loop.
                    done, run_dt = _decode_run(engine, inner_runner, recorder, run, clock,
                                               kv_sample_every,
                                               due[i] if i < n else math.inf, in_time)
                    for r in done:
                        records.add(r)
                        del active[r.request_id]
                    if time.perf_counter() >= next_log:
                        next_log += progress_every_s
                        progress(i)
                    continue
                before = len(step_rows)
                ended = st.num_finished + st.num_aborted
                changed = step_requests()
                # Most steps finish nothing: look for the finished only when some did.
                if st.num_finished + st.num_aborted != ended:
                    for r in changed:
                        if r.status > finished:
                            records.add(r)
                            del active[r.request_id]
                if len(step_rows) != before:
                    if len(step_rows) % kv_sample_every == 0:
                        recorder.sample_kv()
                    if time.perf_counter() >= next_log:
                        next_log += progress_every_s
                        progress(i)
                    continue
                # Nothing could be scheduled (e.g. a static batch waiting to fill): let time
                # pass, but not beyond the next arrival.
                until = clock() + idle_tick_s
                if i < n and due[i] > clock():
                    until = min(until, due[i])
            elif i < n:
                until = due[i]
            else:
                break
            if virtual:
                clock.t = max(clock.t, until)
            elif until > clock():
                time.sleep(until - clock())
    finally:
        engine.runner = inner_runner
        if gc_was_enabled:
            # The run's objects, all still in the young generation, go to the oldest with
            # the frozen ones: else the first collection after enable() walks all of them.
            gc.freeze()
            gc.unfreeze()
            gc.enable()
    end = clock()
    for rid in list(active):
        if engine.abort(rid) is not None:
            aborted += 1
    if records.rows:
        end = min(end, max(r[3] for r in records.rows)) if aborted == 0 else end
    st = sched.stats
    return ReplayResult(
        requests=records.arrays(), steps=steps.arrays(), start=start, end=end,
        num_requests=n, num_rejected=rejected, num_aborted=aborted, num_truncated=num_cut,
        virtual=virtual, wall_s=time.perf_counter() - wall0,
        scheduler_ns=st.schedule_ns + st.update_ns - sched_ns0,
        scheduler_steps=st.num_steps - steps0, preemptions=st.num_preemptions - pre0)
