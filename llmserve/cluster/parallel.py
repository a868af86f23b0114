"""The cluster simulation on several processes: conservative, window-synchronous, exact.

With `distributed` placement every router decides from a snapshot of the replicas' load that it
refreshed at its own staggered times (placement.py), plus its own dispatches since. Between two
consecutive snapshot refreshes (of any router) no decision can depend on what the replicas do:
that interval is the lookahead of a conservative parallel discrete-event simulation. So:

  driver (this process)  runs the routers exactly as ClusterSim.run does (arrivals, FIFO
                          decision queues, snapshot refresh events), but no replica. At each
                          refresh time b it sends every worker the window's decisions for its
                          replicas, waits until they have advanced to b, copies back their load
                          rows and refreshes the router whose snapshot is due.
  workers (forked)       each owns a fixed slice of the replicas (same Scheduler + SimRunner
                          code, same event order: requests reaching a replica before its step at
                          the same time, load samples after) and processes its events strictly
                          before b (a refresh at b reads the load before b's steps, as in one
                          process).

The result equals the single-process run request for request (tested), with the windows adding
no approximation: they are the snapshot refresh times the single-process run already has.
Not supported (a config error): centralized placement or staleness_s = 0 (the routers read
live load: no lookahead), failures (a dead replica's requests are re-routed mid-window),
time_limit_s, and policies with an on_finish hook (none has one today).
"""
from __future__ import annotations

import gc
import heapq
import itertools
import math
import multiprocessing
import time

import numpy as np

from llmserve.cluster.cluster_sim import step_replica
from llmserve.cluster.router import RouteRequest, RouterPolicy
from llmserve.core.request import Request
from llmserve.sampling_params import SamplingParams
from llmserve.workload.replay import prepare

_FIELDS = ("num_running", "num_waiting", "outstanding_tokens", "free_kv_blocks",
           "predicted_work", "prefill_tokens")
_DISPATCH, _STEP, _SAMPLE = 1, 2, 3      # also their priority at equal times


# ---- worker --------------------------------------------------------------------------------
class _Worker:
    """One process's replicas: the per-replica half of ClusterSim.run's event loop."""

    def __init__(self, sim, reqs, due, gids, pred_len, max_d):
        self.sim = sim
        self.reqs = reqs
        self.due = due
        self.gids = np.asarray(gids, np.int64)
        self.reps = sim.replicas
        self.pred_len = pred_len
        self.track_pred = sim.track_pred
        self.max_d = max_d
        self.heap = []
        self.seq = itertools.count()
        self.pred_rem = {}
        self.held_ids = {}
        self.rows = []
        self.busy = 0
        self.runner_ns = 0
        self.last_t = 0.0
        self.window_cpu = []         # CPU seconds per window (the critical path estimate)
        self.sample_t, self.sample_out, self.sample_req, self.sample_busy = [], [], [], []
        heapq.heappush(self.heap, (0.0, _SAMPLE, next(self.seq), _SAMPLE, 0, 0))

    def dispatch(self, i: int, t: float, pos: int) -> None:
        sim, w, rep = self.sim, self.reqs[i], self.reps[pos]
        rid = str(i)
        ids = self.held_ids.pop(i, None)
        if ids is None:
            ids = w.prompt_token_ids if w.prompt_token_ids is not None else [0] * w.prompt_len
        cap = sim._cap(w.prompt_len, w.output_len)
        req = Request(rid, ids, SamplingParams(max_tokens=w.output_len, ignore_eos=True,
                                               temperature=0.0), self.due[i])
        rep.sched.add_request(req)      # the driver already applied add_request's checks
        req.true_num_output_tokens = w.output_len
        if w.prompt_text is not None:
            req.prompt_text = w.prompt_text
        rep.live_tokens += w.prompt_len + cap
        rep.live_cap += cap
        rep.live_true += w.prompt_len + w.output_len
        rep.num_dispatched += 1
        if self.pred_len is not None:
            p = float(self.pred_len[i])
            rep.pred_total += p
            self.pred_rem[rid] = p
        sim._refresh(rep)
        if rep.pending is None and rep.next_t != t:
            if rep.next_t is None:
                self.busy += 1
            rep.gen += 1
            rep.next_t = t
            heapq.heappush(self.heap, (t, _STEP, next(self.seq), _STEP, pos, rep.gen))

    def finished(self, rep, q) -> None:
        sim = self.sim
        self.rows.append((q.arrival_time, q.first_scheduled_time, q.first_token_time,
                          q.finish_time, q.num_prompt_tokens, q.num_output_tokens,
                          q.num_preemptions, q.num_cached_tokens, rep.id, int(q.request_id)))
        rep.num_finished += 1
        cap = sim._cap(q.num_prompt_tokens, q.sampling_params.max_tokens)
        rep.live_tokens -= q.num_prompt_tokens + cap
        rep.live_cap -= cap
        rep.live_true -= q.num_prompt_tokens + q.sampling_params.max_tokens
        if self.track_pred:
            rep.pred_total -= self.pred_rem.pop(q.request_id, 0.0)
            rep.out_made -= q.num_output_tokens

    def step(self, pos: int, t: float) -> None:
        rep = self.reps[pos]
        nt, ns = step_replica(rep, t, self.sim.config.idle_tick_s,
                              self.pred_rem if self.track_pred else None, self.finished)
        self.runner_ns += ns
        if nt is None:
            self.busy -= 1
        else:
            heapq.heappush(self.heap, (nt, _STEP, next(self.seq), _STEP, pos, rep.gen))
        self.sim._refresh(rep)

    def sample(self, t: float) -> None:
        view = self.sim.live.view
        g = self.gids
        self.sample_t.append(t)
        self.sample_out.append(self.sim.true_outstanding[g].astype(np.float32))
        self.sample_req.append((view.num_running[g] + view.num_waiting[g]).astype(np.int32))
        self.sample_busy.append(self.busy)
        for pos in g:
            self.reps[pos].sched.step_records.rows.clear()
        # The driver stops the samples at the first time no replica anywhere is busy and no
        # request is still to arrive or be decided; this worker's later rows would repeat its
        # idle state, so it may stop as soon as it is idle after the last decision.
        if t < self.max_d or self.busy:
            heapq.heappush(self.heap, (t + self.sim.config.sample_interval_s, _SAMPLE,
                                       next(self.seq), _SAMPLE, 0, 0))

    def advance(self, b: float, batch) -> None:
        """Take the window's decisions (arrays d, i, replica, immediate; ids or None) and
        process every event strictly before b, and the immediate decisions at b."""
        d, idx, pos, now, ids = batch
        heap, push, pop = self.heap, heapq.heappush, heapq.heappop
        for k in range(len(idx)):
            i = int(idx[k])
            if ids is not None and ids[k] is not None:
                self.held_ids[i] = ids[k].tolist()
            # A decision made at its arrival (no decision cost) precedes, in one process, a
            # snapshot refresh and other decisions at that same time: priority 0.
            push(heap, (float(d[k]), 0 if now[k] else _DISPATCH, next(self.seq), _DISPATCH,
                        i, int(pos[k])))
        reps = self.reps
        while heap and (heap[0][0] < b or (heap[0][0] == b and heap[0][1] == 0)):
            t, _, _, kind, x, g = pop(heap)
            self.last_t = t
            if kind == _STEP:
                if g == reps[x].gen:
                    self.step(x, t)
            elif kind == _DISPATCH:
                self.dispatch(x, t, g)
            else:
                self.sample(t)

    def load_rows(self) -> np.ndarray:
        v = self.sim.live.view
        return np.stack([getattr(v, f)[self.gids] for f in _FIELDS])

    def final(self) -> dict:
        reps = [self.reps[g] for g in self.gids]
        return {"rows": np.array([[np.nan if v is None else v for v in r] for r in self.rows],
                                 np.float64).reshape(-1, 10),
                "sample_t": np.asarray(self.sample_t),
                "sample_out": np.stack(self.sample_out) if self.sample_out
                else np.zeros((0, len(reps)), np.float32),
                "sample_req": np.stack(self.sample_req) if self.sample_req
                else np.zeros((0, len(reps)), np.int32),
                "sample_busy": np.asarray(self.sample_busy, np.int64),
                "replicas": [(r.num_dispatched, r.num_finished, r.runner.num_steps,
                              r.runner.busy_s, r.sched.stats.num_preemptions,
                              r.sched.stats.num_cache_hit_tokens, r.sched.stats.schedule_ns,
                              r.sched.stats.update_ns) for r in reps],
                "runner_ns": self.runner_ns, "last_t": self.last_t,
                "window_cpu": np.asarray(self.window_cpu),
                "cpu_s": time.process_time()}


def _worker_main(conn, sim, reqs, due, gids, pred_len, max_d) -> None:
    gc.freeze()
    gc.disable()
    w = _Worker(sim, reqs, due, gids, pred_len, max_d)
    try:
        while True:
            msg = conn.recv()
            c0 = time.process_time()
            if msg[0] == "advance":
                w.advance(msg[1], msg[2])
                rows = w.load_rows()
                w.window_cpu.append(time.process_time() - c0)
                conn.send(rows)
            else:
                w.advance(math.inf, msg[1])
                w.window_cpu.append(time.process_time() - c0)
                conn.send(w.final())
                return
    except BaseException as e:  # the driver re-raises it with the worker's message
        conn.send(("error", f"{type(e).__name__}: {e}"))
        raise
    finally:
        conn.close()


# ---- driver --------------------------------------------------------------------------------
def _rejects(sched_config, prompt_len: int, max_tokens: int) -> str | None:
    """Scheduler.add_request's checks, made where the decision is (they depend only on the
    request and the replica's pool), so a rejected request touches no router state."""
    c = sched_config
    if prompt_len < 1 or prompt_len >= c.max_model_len:
        return f"prompt of {prompt_len} tokens; must be in [1, max_model_len={c.max_model_len})"
    need = -(-min(prompt_len + max_tokens, c.max_model_len) // c.block_size)
    if need > c.num_kv_blocks:
        return f"needs {need} KV blocks at its longest but the pool has {c.num_kv_blocks}"
    return None


def run_parallel(sim, workload, *, rate_scale: float = 1.0, max_requests: int | None = None,
                 progress_every_s: float = 30.0, label: str = ""):
    import logging
    log = logging.getLogger("llmserve.cluster.cluster_sim")
    cfg = sim.config
    ec = sim.engine_config
    for dp in sim.routers:
        if type(dp.policy).on_finish is not RouterPolicy.on_finish:
            raise ValueError(f"cluster config: num_workers > 1 needs a policy without an "
                             f"on_finish hook (the routers learn of finishes only at window "
                             f"ends), got policy={cfg.policy!r}")
    reqs, num_cut = prepare(workload, rate_scale=rate_scale, max_requests=max_requests,
                            max_model_len=ec.max_model_len)
    n = len(reqs)
    due = [w.arrival_s for w in reqs]
    vocab = sim.model_config.vocab_size
    rng = np.random.default_rng(cfg.seed)
    reps = sim.replicas
    routers = sim.routers
    nrouters = len(routers)
    view = sim.live.view
    need_ids = any(r.sched.config.enable_prefix_caching for r in reps) or \
        cfg.policy == "prefix_aware" or sim.track_pred
    pred_len = None
    if sim.track_pred:
        def ids_of(i):
            w = reqs[i]
            if w.prompt_token_ids is not None:
                return w.prompt_token_ids
            return np.random.default_rng([cfg.seed, i]).integers(0, vocab, w.prompt_len)
        pred_len = sim._predictions(reqs, ids_of)

    # Every decision's time, up front: a router's FIFO queue depends on arrival times only.
    # (It advances the routers' free_at/busy counters exactly as the single-process loop does.)
    dec_t = np.array([routers[i % nrouters].admit(due[i]) for i in range(n)])
    max_d = float(dec_t.max()) if n else 0.0

    nw = cfg.num_workers
    parts = np.array_split(np.arange(len(reps)), nw)
    ctx = multiprocessing.get_context("fork")
    conns, procs = [], []
    gc.collect()
    for part in parts:
        a, b = ctx.Pipe()
        p = ctx.Process(target=_worker_main, args=(b, sim, reqs, due, part, pred_len, max_d),
                        daemon=True)
        p.start()
        b.close()
        conns.append(a)
        procs.append(p)
    owner = np.zeros(len(reps), np.int64)
    for k, part in enumerate(parts):
        owner[part] = k

    def recv(c):
        msg = c.recv()
        if isinstance(msg, tuple) and msg and msg[0] == "error":
            raise RuntimeError(f"cluster worker failed: {msg[1]}")
        return msg

    batches = [[] for _ in range(nw)]
    wait_ns = 0

    def flush(b: float, final: bool = False):
        nonlocal wait_ns
        for k, c in enumerate(conns):
            bt = batches[k]
            batch = (np.array([x[0] for x in bt], np.float64),
                     np.array([x[1] for x in bt], np.int64),
                     np.array([x[2] for x in bt], np.int64),
                     np.array([x[3] for x in bt], bool),
                     [x[4] for x in bt] if need_ids else None)
            c.send(("final", batch) if final else ("advance", b, batch))
            batches[k] = []
        t0 = time.perf_counter_ns()
        got = [recv(c) for c in conns]
        wait_ns += time.perf_counter_ns() - t0
        if not final:
            for part, rows in zip(parts, got):
                for f, row in zip(_FIELDS, rows):
                    getattr(view, f)[part] = row
        return got

    route_ns = 0
    rejected = 0

    def dispatch(i: int, t: float, ids, k: int, now: bool) -> None:
        nonlocal route_ns, rejected
        w = reqs[i]
        dp = routers[k]
        cap = sim._cap(w.prompt_len, w.output_len)
        p = float(pred_len[i]) if pred_len is not None else None
        rr = RouteRequest(str(i), ids, cap, p)
        t0 = time.perf_counter_ns()
        pos = dp.policy.pick(rr, dp.view)
        route_ns += time.perf_counter_ns() - t0
        if not reps[pos].alive:
            raise AssertionError(f"router chose dead replica {pos}")
        why = _rejects(reps[pos].sched.config, w.prompt_len, w.output_len)
        if why is not None:
            rejected += 1
            log.warning("request %d rejected: request %r: %s", i, str(i), why)
            return
        dp.note_dispatch(pos, w.prompt_len + cap, w.prompt_len, p or 0.0)
        dp.policy.on_dispatch(rr, pos)
        drawn = ids if (need_ids and w.prompt_token_ids is None) else None
        batches[owner[pos]].append((t, i, pos, now, None if drawn is None else
                                    np.asarray(drawn, np.int64)))

    # The routers' events as in ClusterSim.run (snapshot refreshes, decisions that end later
    # than their arrival), with the replicas' part replaced by flush() at each refresh.
    heap: list = []
    push, pop = heapq.heappush, heapq.heappop
    seq = itertools.count()
    stale = [dp for dp in routers if dp.stale]
    period = cfg.placement.staleness_s
    for dp in stale:
        dp.refresh()
        push(heap, (period * (dp.index + 1) / len(stale), 0, next(seq), 0, dp.index))
    held_ids: dict[int, list] = {}
    pending = 0
    wall0 = time.perf_counter()
    cpu0 = time.process_time()
    next_log = wall0 + progress_every_s
    gc_was = gc.isenabled()
    gc.freeze()
    gc.disable()
    i = 0
    t = 0.0
    try:
        while True:
            top = heap[0][0] if heap else math.inf
            if i < n and due[i] <= top:
                t = due[i]
                w = reqs[i]
                ids = w.prompt_token_ids
                if ids is None:
                    ids = rng.integers(0, vocab, w.prompt_len).tolist() if need_ids \
                        else [0] * w.prompt_len
                d = float(dec_t[i])
                if d == t:
                    dispatch(i, t, ids, i % nrouters, True)
                else:
                    held_ids[i] = ids
                    pending += 1
                    push(heap, (d, 1, next(seq), 1, i))
                i += 1
                continue
            if not heap:
                break
            t, _, _, kind, x = pop(heap)
            if kind == 1:
                pending -= 1
                dispatch(x, t, held_ids.pop(x), x % nrouters, False)
            else:
                flush(t)
                routers[x].refresh()
                if i < n or pending:
                    push(heap, (t + period, 0, next(seq), 0, x))
                if time.perf_counter() >= next_log:
                    next_log += progress_every_s
                    log.info("%s t=%.2fs arrived %d/%d (%d workers)", label, t, i, n, nw)
        finals = flush(math.inf, final=True)
    finally:
        if gc_was:
            gc.enable()
        gc.unfreeze()
        for c in conns:
            c.close()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0

    # Merge: finished-request rows, the workers' replica statistics, the load samples.
    rows = [tuple(r) for f in finals for r in f["rows"].tolist()]
    runner_ns = sum(f["runner_ns"] for f in finals)
    for part, f in zip(parts, finals):
        for g, st in zip(part, f["replicas"]):
            r = reps[g]
            (r.num_dispatched, r.num_finished, r.runner.num_steps, r.runner.busy_s,
             r.sched.stats.num_preemptions, r.sched.stats.num_cache_hit_tokens,
             r.sched.stats.schedule_ns, r.sched.stats.update_ns) = st
    longest = max(range(nw), key=lambda k: len(finals[k]["sample_t"]))
    times = finals[longest]["sample_t"]
    busy = np.zeros(len(times), np.int64)
    outs, reqc = [], []
    for f in finals:
        m = len(f["sample_t"])
        busy[:m] += f["sample_busy"]
        # A worker that stopped sampling stays idle in its last sampled state.
        outs.append(np.concatenate([f["sample_out"], np.repeat(f["sample_out"][-1:],
                                                               len(times) - m, 0)]))
        reqc.append(np.concatenate([f["sample_req"], np.repeat(f["sample_req"][-1:],
                                                               len(times) - m, 0)]))
    # The single-process run samples at t and goes on while a request is still to arrive or
    # be decided (t < the last decision) or a replica is busy.
    go = (times < max_d) | (busy > 0)
    m = int(np.argmin(go)) + 1 if (~go).any() else len(times)
    order = np.argsort(np.concatenate(parts), kind="stable")
    out_all = np.concatenate(outs, axis=1)[:m, order]
    req_all = np.concatenate(reqc, axis=1)[:m, order]
    alive = view.alive.copy()
    end = max(r[3] for r in rows) if rows else max([f["last_t"] for f in finals] + [t])
    counters = {"rejected": rejected, "rerouted": 0}
    res = sim._result(reqs, n, num_cut, rows, list(times[:m]), list(out_all),
                      list(req_all), [alive] * m, counters, 0, end, wall, route_ns,
                      runner_ns, cpu)
    res.profile["driver_wait_s"] = wait_ns / 1e9
    res.profile["process_cpu_s"] = cpu + sum(f["cpu_s"] for f in finals)
    res.profile["event_loop_other_s"] = None
    res.profile["num_workers"] = nw
    res.profile["worker_cpu_s"] = [float(f["window_cpu"].sum()) for f in finals]
    # What the wall time would be with a core per process and nothing else running: the
    # driver's own CPU plus, per window, the slowest worker (pipe latency not counted).
    res.profile["critical_path_cpu_s"] = cpu + float(
        np.stack([f["window_cpu"] for f in finals]).max(axis=0).sum())
    return res
