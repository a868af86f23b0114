"""Per-request and per-step records of a run, gathered cheaply while it runs.

Requests are recorded when they finish (their Request object is then dropped, so a long
trace does not keep every token list alive); steps are recorded by a wrapper around the
engine's runner, which is also what advances a virtual clock.
"""
from __future__ import annotations

import itertools

import numpy as np


class RequestRecords:
    FIELDS = ("arrival", "first_scheduled", "first_token", "finish", "prompt_len", "output_len",
              "preemptions", "cached_tokens")

    def __init__(self):
        self.rows: list[tuple] = []
        # Token times of finished requests, turned into inter-token gaps 512 requests at a
        # time (a numpy call per request was a visible share of a simulation; holding every
        # list to the end would keep a long trace's token times alive as Python floats).
        self.token_times: list[list[float]] = []
        self.itl_gaps: list[np.ndarray] = []

    def add(self, req) -> None:
        self.rows.append((req.arrival_time, req.first_scheduled_time, req.first_token_time,
                          req.finish_time, req.num_prompt_tokens, req.num_output_tokens,
                          req.num_preemptions, req.num_cached_tokens))
        tt = req.token_times
        if len(tt) > 1:
            self.token_times.append(tt)
            if len(self.token_times) >= 512:
                self.itl_gaps.append(_gaps(self.token_times))
                self.token_times = []

    def arrays(self) -> dict[str, np.ndarray]:
        if not self.rows:
            return {f: np.zeros(0) for f in self.FIELDS} | {"itl": np.zeros(0)}
        cols = list(zip(*self.rows))
        out = {f: np.array([np.nan if v is None else v for v in col], np.float64)
               for f, col in zip(self.FIELDS, cols)}
        out["itl"] = np.concatenate(self.itl_gaps + [_gaps(self.token_times)])
        return out


def _gaps(lists: list[list[float]]) -> np.ndarray:
    """Consecutive differences within each list, concatenated (np.diff per list, at once)."""
    if not lists:
        return np.zeros(0)
    flat = np.fromiter(itertools.chain.from_iterable(lists), np.float64)
    d = np.diff(flat)
    # The difference across two lists' boundary sits at index (end of a list) - 1.
    ends = np.cumsum([len(x) for x in lists])[:-1]
    keep = np.ones(d.size, bool)
    keep[ends - 1] = False
    return d[keep]


class StepRecords:
    FIELDS = ("start", "step_time", "tokens", "padding", "seqs", "kv_used_blocks", "waiting",
              "flops", "bytes")

    def __init__(self):
        # One tuple (FIELDS order) per step: a single append on the hot path.
        self.rows: list[tuple] = []
        # Sampled every few steps (a pass over the running requests): KV slots reserved by
        # running requests and those actually holding a token.
        self.kv_reserved_slots: list[int] = []
        self.kv_used_slots: list[int] = []

    @property
    def num_steps(self) -> int:
        return len(self.rows)

    @property
    def cols(self) -> dict[str, list]:
        cols = list(zip(*self.rows)) if self.rows else [()] * len(self.FIELDS)
        return {f: list(c) for f, c in zip(self.FIELDS, cols)}

    def arrays(self) -> dict[str, np.ndarray]:
        if self.rows:
            # fromiter over the flattened rows: about twice as fast as asarray(rows), which
            # a whole-trace simulation (~460,000 rows) felt.
            n = len(self.FIELDS)
            table = np.fromiter(itertools.chain.from_iterable(self.rows), np.float64,
                                len(self.rows) * n).reshape(-1, n)
            out = {f: table[:, k].copy() for k, f in enumerate(self.FIELDS)}
        else:
            out = {f: np.zeros(0) for f in self.FIELDS}
        out["kv_reserved_slots"] = np.asarray(self.kv_reserved_slots, np.float64)
        out["kv_used_slots"] = np.asarray(self.kv_used_slots, np.float64)
        return out


class StepRecorder:
    """Wraps a runner: records each step, and advances a virtual clock by the step's time.

    counter: a CostModel without buckets whose counts() give the useful FLOPs and bytes of a
    step (for MFU/MBU); a SimRunner that already computed them is reused.
    """

    def __init__(self, runner, scheduler, records: StepRecords, clock=None, counter=None):
        self.runner = runner
        self.scheduler = scheduler
        self.records = records
        self.clock = clock
        self.counter = counter
        self._reuse_counts = (getattr(runner, "last_counts", "absent") != "absent"
                              and getattr(getattr(runner, "cost_model", None), "buckets",
                                          True) is None)
        self._append = records.rows.append
        self._execute = runner.execute

    def execute(self, sched_out):
        clock = self.clock
        start = clock.t if clock is not None else None
        out = self._execute(sched_out)
        dt = out.step_time_s
        if clock is not None:
            clock.t += dt
        else:
            import time
            start = time.perf_counter() - dt
        if self._reuse_counts:
            counts = self.runner.last_counts
        elif self.counter is not None:
            counts = self.counter.counts(sched_out)
        else:
            counts = (0.0, 0.0, 0.0, 0.0, 0)
        sch = self.scheduler
        self._append((start, dt, sched_out.num_scheduled_tokens, sched_out.num_padding_tokens,
                      len(sched_out.scheduled), sch.block_manager.num_used_blocks,
                      len(sch.waiting), counts[0] + counts[2], counts[1] + counts[3]))
        return out

    def sample_kv(self) -> None:
        bs = self.scheduler.config.block_size
        reserved = used = 0
        for r in self.scheduler.running:
            reserved += len(r.block_ids) * bs
            used += r.num_computed_tokens
        self.records.kv_reserved_slots.append(reserved)
        self.records.kv_used_slots.append(min(used, reserved))
