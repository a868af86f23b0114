"""The simulator's runs of decode steps (core/decode_run.py) against the oracle: the same
replay stepped one scheduler step at a time (replay(..., fast_decode=False)). Everything a
run leaves must be identical: every request's tokens, token times, first-token and finish
times, preemptions, the scheduler's step records and totals, the block pool (free order,
prefix cache, evictions), the replay's request and step arrays and KV samples, the engine's
step times and the runner's busy time."""
import numpy as np
import pytest

from llmserve.config import EngineConfig
from llmserve.core.sched_output import ScheduledRequest, SchedulerOutput
from llmserve.engine import LLMEngine
from llmserve.model.config import get_preset
from llmserve.runner.sim_runner import SimRunner
from llmserve.sim.cost_model import CostModel
from llmserve.sim.hardware import get_hardware
from llmserve.workload.replay import VirtualClock, replay
from llmserve.workload.synthetic import synthetic_workload

MODEL = get_preset("llama3-8b")


def _run(wl, fast, policy="chunked", kv_blocks=4096, budget=512, time_limit=None, tp=1,
         **knobs):
    ec = EngineConfig(policy=policy, model="llama3-8b", load_format="dummy",
                      num_kv_blocks=kv_blocks, max_model_len=2048, max_num_seqs=64,
                      max_num_batched_tokens=budget if policy in ("chunked", "predictive")
                      else 2048, **knobs)
    runner = SimRunner(CostModel(MODEL, get_hardware("h100-80gb"), tp=tp))
    eng = LLMEngine(ec, runner=runner, model=(MODEL, None, None), clock=VirtualClock())
    sched = eng.scheduler
    kept = []
    add = sched.add_request
    sched.add_request = lambda req: (kept.append(req), add(req))[1]
    plans = []
    if fast:
        plan, apply = sched.plan_decode_run, sched.apply_decode_run
        sched.plan_decode_run = lambda *a: plans.append(plan(*a)) or plans[-1]
        # Spied: how many steps each run took and how many requests finished inside it.
        sched.apply_decode_run = lambda run, s, e: (
            lambda out: runs.append((len(s), len(out[0]), run.sample_step is not None))
            or out)(apply(run, s, e))
    runs = []
    res = replay(eng, wl, seed=3, time_limit_s=time_limit, fast_decode=fast)
    return eng, res, kept, runs


def _state(eng, res, kept):
    sched = eng.scheduler
    bm = sched.block_manager
    st = sched.stats.as_dict()
    for k in ("schedule_ns", "update_ns", "predict_ns", "scheduler_ns", "scheduler_us_per_step"):
        st.pop(k, None)
    reqs = [(r.request_id, r.status, list(r.token_ids), list(r.token_times), r.first_token_time,
             r.first_scheduled_time, r.finish_time, r.num_preemptions, r.num_cached_tokens,
             list(r.block_ids), list(r.block_hashes)) for r in kept]
    # schedule_ns / update_ns (the last two fields) are wall-clock timings.
    rows = [r[:-2] for r in sched.step_records.rows]
    pool = (list(bm._free), list(bm._cached_free), dict(bm._cached), list(bm.ref_counts),
            list(bm._block_hash), bm.num_evictions, bm.num_hit_tokens, bm.num_lookup_tokens,
            bm.num_shared_refs)
    arrays = {f"req.{k}": v for k, v in res.requests.items()}
    arrays.update({f"step.{k}": v for k, v in res.steps.items()})
    scalars = (res.start, res.end, res.num_requests, res.num_rejected, res.num_aborted,
               res.scheduler_steps, res.preemptions, sched._step_id, sched._kv_tokens,
               eng.runner.busy_s, eng.runner.num_steps, eng.runner.last_counts,
               list(sched._finished_ids), [r.request_id for r in sched.running])
    return st, reqs, rows, pool, arrays, scalars, list(eng.step_times)


def _compare(wl, min_run_steps=1, **kw):
    slow = _state(*_run(wl, False, **kw)[:3])
    eng, res, kept, plans = _run(wl, True, **kw)
    fast = _state(eng, res, kept)
    names = ("stats", "requests", "step records", "block pool", "arrays", "scalars",
             "step times")
    for name, a, b in zip(names, slow, fast):
        if name == "arrays":
            assert a.keys() == b.keys()
            for k in a:     # exact: a run's times are added one step at a time, as in a step
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert a == b, name
    # The fast path really ran (else this compares the slow path with itself), and
    # requests finished inside runs.
    if min_run_steps:
        assert max(r[0] for r in plans) >= min_run_steps
        assert sum(r[1] for r in plans) > 0
    return slow, plans


def _wl(n, rate, seed=0, **kw):
    return synthetic_workload(n, rate, seed=seed, lengths="high_variance",
                              prompt_len=(20, 300), short_output=(2, 30),
                              long_output=(60, 400), vocab_size=MODEL.vocab_size, **kw)


def test_arrivals_mid_run_chunked():
    # ~40 req/s against ~10 ms steps: arrivals cut runs short, many finishes.
    st, runs = _compare(_wl(120, 40.0), min_run_steps=20, budget=128)
    assert st[0]["num_finished"] == 120
    # Runs that began with a prompt's last chunks and went on decoding it.
    assert sum(r[2] for r in runs) > 10


def test_tensor_parallel_cost_model():
    # The all-reduce term is part of every step's time, in runs as in single steps.
    _compare(_wl(60, 40.0, seed=7), budget=128, tp=2, min_run_steps=10)


@pytest.mark.parametrize("policy", ["continuous", "predictive"])
def test_presets(policy):
    _compare(_wl(80, 30.0, seed=1), policy=policy, min_run_steps=10)


def test_preemption_pressure():
    # A pool of 120 blocks for up to 44 blocks per request: decode runs end where a block
    # cannot be had, and the ordinary step preempts.
    st, plans = _compare(_wl(60, 200.0, seed=2), kv_blocks=120)
    assert st[0]["num_preemptions"] > 0


def test_runs_end_where_the_pool_runs_out():
    # Nothing waits: three requests outgrow a 70-block pool (prompts of 13 blocks, 25 more
    # blocks of output each). Runs stop where a block is missing, that step preempts; the
    # shortest request's finish inside a run gives its blocks back to the others.
    from llmserve.workload import WorkloadRequest
    wl = [WorkloadRequest(0.0, 200, n) for n in (150, 400, 400)]
    wl += [WorkloadRequest(0.0, 30, 3)]
    st, runs = _compare(wl, kv_blocks=70, min_run_steps=100)
    assert st[0]["num_preemptions"] > 0


def test_prefix_caching_with_evictions():
    # Shared prompts (cache hits), a small pool (evictions of cached blocks while runs grow
    # and register blocks), and identical prompts whose decode blocks hash alike.
    wl = _wl(80, 60.0, seed=4, num_prefixes=3, prefix_len=96)
    wl += [type(w)(w.arrival_s + 0.001, w.prompt_len, w.output_len, w.prompt_token_ids)
           for w in wl[:20]]
    st, runs = _compare(wl, kv_blocks=160, budget=128, enable_prefix_caching=True)
    assert sum(r[2] for r in runs) > 0
    assert st[0]["num_cache_hit_tokens"] > 0
    assert _run(wl, False, kv_blocks=160, budget=128, enable_prefix_caching=True)[0] \
        .scheduler.block_manager.num_evictions > 0


def test_prompts_chunked_inside_runs():
    # Prompts chunked over several steps inside runs: one samples its only token and
    # finishes there, the others go on decoding; decode rows that finish meanwhile give
    # the next chunk one more token of the budget.
    from llmserve.workload import WorkloadRequest
    wl = [WorkloadRequest(0.0, 40, 300), WorkloadRequest(0.0, 30, 3),
          WorkloadRequest(0.001, 1500, 1), WorkloadRequest(0.3, 1200, 2),
          WorkloadRequest(0.3005, 20, 2), WorkloadRequest(0.6, 900, 40)]
    _, runs = _compare(wl, budget=256, min_run_steps=5)
    assert sum(r[2] for r in runs) >= 2


def test_time_limit_mid_run():
    _compare(_wl(40, 20.0, seed=5), time_limit=0.7)


def test_static_is_stepped_one_by_one():
    # Formed batches: no decode runs (plan says None), and the results are unchanged.
    _, plans = _compare(_wl(40, 30.0, seed=6), min_run_steps=0, policy="static")
    assert not plans


def test_a_subclass_that_changes_a_step_gets_no_runs():
    from llmserve.core.scheduler import Scheduler, SchedulerConfig

    class Logged(Scheduler):
        def update_from_output(self, *a):
            return super().update_from_output(*a)

    sched = Logged(SchedulerConfig())
    from llmserve.core.request import Request
    from llmserve.sampling_params import SamplingParams
    sched.add_request(Request("a", [1, 2, 3], SamplingParams(max_tokens=50), 0.0))
    out = sched.schedule(0.0)
    sched.update_from_output(out, SimRunner(CostModel(MODEL, get_hardware("h100-80gb")))
                             .execute(out), 0.01)
    assert sched.plan_decode_run(0) is None
    plain = Scheduler(SchedulerConfig())
    plain.add_request(Request("a", [1, 2, 3], SamplingParams(max_tokens=50), 0.0))
    out = plain.schedule(0.0)
    plain.update_from_output(out, SimRunner(CostModel(MODEL, get_hardware("h100-80gb")))
                             .execute(out), 0.01)
    run = plain.plan_decode_run(0)
    assert run is not None and run.num_steps == 49 and run.context == 4


def test_decode_counts_equal_counts_of_the_step():
    cm = CostModel(MODEL, get_hardware("h100-80gb"))
    starts = [0, 15, 16, 700, 2046]
    so = SchedulerOutput(1, [ScheduledRequest(str(i), [7], s, [0], True, 1, (0, 0, 1, 0))
                             for i, s in enumerate(starts)], len(starts))
    assert cm.decode_counts(len(starts), sum(s + 1 for s in starts)) == cm.counts(so)
