"""Property-based tests of the scheduler invariants, for every preset, with the mock runner.

Each example is a random workload (arrivals over time, shared prompt prefixes, stop tokens,
aborts) on a random configuration (pool size, block size, budget, max_num_seqs, knobs). The
oracle for outputs is the mock runner's formula worked out per request (sched_helpers).
"""
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_helpers import (
    assert_finished_correctly,
    drive,
    expected_output,
    make_req,
    mock_token,
)

from llmserve.core.request import RequestStatus
from llmserve.core.scheduler import PRESETS, SchedulerConfig, create_scheduler

MAX_LEN = 128
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}


@st.composite
def workloads(draw, max_reqs=14):
    n = draw(st.integers(1, max_reqs))
    prefixes = [list(range(500 + 40 * k, 500 + 40 * k + draw(st.integers(0, 40))))
                for k in range(2)]
    reqs = []
    for i in range(n):
        pre = prefixes[draw(st.integers(0, 1))] if draw(st.booleans()) else []
        tail = draw(st.integers(1, 40))
        prompt = pre + [(i * 31 + j) % 400 + 1 for j in range(tail)]
        mt = draw(st.integers(1, min(50, MAX_LEN - len(prompt))))
        seed = draw(st.integers(0, 5))
        stop = ()
        if draw(st.integers(0, 4)) == 0:    # a stop token somewhere in its output
            stop = (mock_token(seed * 100 + i, draw(st.integers(0, mt - 1)), 1000),)
        arrival = float(draw(st.integers(0, 30)))
        reqs.append(make_req(i, prompt, mt, arrival, stop, seed=seed * 100 + i))
    aborts = {}
    for r in reqs:
        if draw(st.integers(0, 9)) == 0:
            aborts[r.request_id] = int(r.arrival_time) + draw(st.integers(0, 20))
    return reqs, aborts


@st.composite
def configs(draw, preset):
    bs = draw(st.sampled_from([4, 8, 16]))
    seqs = draw(st.integers(1, 8))
    chunked = preset in ("chunked", "predictive")
    budget = draw(st.sampled_from([16, 32, 64])) if chunked else MAX_LEN
    blocks = draw(st.integers(MAX_LEN // bs, 6 * MAX_LEN // bs))
    kw = {"max_num_seqs": seqs, "max_num_batched_tokens": max(budget, bs), "block_size": bs,
              "num_kv_blocks": blocks, "max_model_len": MAX_LEN,
              "enable_prefix_caching": draw(st.booleans()),
              "admission_watermark": draw(st.sampled_from([0.0, 0.05]))}
    if preset == "static":
        kw.update(static_batch_size=draw(st.integers(1, 8)),
                  static_batch_timeout_s=float(draw(st.integers(0, 3))),
                  queue_policy=draw(st.sampled_from(["fcfs", "length_bins"])),
                  predictor=draw(st.sampled_from(["oracle", "noisy_oracle:0.5:1"])))
    elif preset == "predictive":
        kw.update(queue_policy=draw(st.sampled_from(["shortest_first", "length_bins"])),
                  kv_allocation=draw(st.sampled_from(["paged", "reserve_predicted"])),
                  preemption_victim=draw(st.sampled_from(["newest", "most_remaining"])),
                  aging_rate=float(draw(st.sampled_from([0, 0.5, 5]))),
                  length_bins=(10, 30),
                  predictor=draw(st.sampled_from(["oracle", "noisy_oracle:1.0:3",
                                                  "constant:20"])))
    else:
        kw.update(kv_allocation=draw(st.sampled_from(["paged", "paged", "reserve_max"])))
    return SchedulerConfig.for_policy(preset, **kw)


def _run_and_check(cfg, reqs, aborts):
    sched = create_scheduler(cfg)
    accepted = []
    for r in reqs:
        if math.ceil(min(r.num_prompt_tokens + r.sampling_params.max_tokens, MAX_LEN)
                     / cfg.block_size) <= cfg.num_kv_blocks:
            accepted.append(r)
    drive(sched, accepted, abort_at=aborts)
    # Every request finishes or is aborted; the pool is entirely free, every ref count zero.
    assert not sched.has_unfinished()
    sched.block_manager.check_all_free()
    assert_finished_correctly(accepted, aborted=set(aborts))
    st_ = sched.stats
    assert st_.num_finished + st_.num_aborted == len(accepted)
    assert sum(r.num_preemptions for r in accepted) == st_.num_preemptions
    if cfg.batching == "static":
        assert st_.num_preemptions == 0
    else:
        assert st_.num_padding_tokens == 0
    return sched


@pytest.mark.parametrize("preset", PRESETS)
@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_invariants_hold_for_random_workloads(preset, data):
    cfg = data.draw(configs(preset))
    reqs, aborts = data.draw(workloads())
    _run_and_check(cfg, reqs, aborts)


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
@settings(max_examples=400, **SETTINGS)
@given(data=st.data())
def test_invariants_hold_for_random_workloads_long(preset, data):
    cfg = data.draw(configs(preset))
    reqs, aborts = data.draw(workloads(max_reqs=30))
    _run_and_check(cfg, reqs, aborts)


@pytest.mark.parametrize("preset", ["continuous", "chunked", "predictive"])
@settings(max_examples=25, **SETTINGS)
@given(data=st.data())
def test_preempted_output_equals_unpreempted_run(preset, data):
    """The same workload in a pool too small (preemptions) and a roomy one (none)."""
    reqs, _ = data.draw(workloads(max_reqs=10))
    bs = 4
    small = SchedulerConfig.for_policy(preset, max_num_seqs=8, max_num_batched_tokens=MAX_LEN,
                                       block_size=bs, num_kv_blocks=MAX_LEN // bs,
                                       max_model_len=MAX_LEN, admission_watermark=0.0)
    big = SchedulerConfig.for_policy(preset, max_num_seqs=8, max_num_batched_tokens=MAX_LEN,
                                     block_size=bs, num_kv_blocks=40 * MAX_LEN // bs,
                                     max_model_len=MAX_LEN)
    copies = [make_req(r.request_id, r.prompt_token_ids, r.sampling_params.max_tokens,
                       r.arrival_time, r.sampling_params.stop_token_ids, r.sampling_tuple[3])
              for r in reqs]
    s_small = create_scheduler(small)
    drive(s_small, reqs)
    s_big = create_scheduler(big)
    drive(s_big, copies)
    assert s_big.stats.num_preemptions == 0
    for a, b in zip(reqs, copies):
        assert a.output_token_ids == b.output_token_ids == expected_output(a)
        assert a.status == b.status


def test_forced_preemption_happens_and_resumes():
    cfg = SchedulerConfig.for_policy("chunked", max_num_seqs=8, max_num_batched_tokens=64,
                                     block_size=4, num_kv_blocks=20, max_model_len=128,
                                     admission_watermark=0.0)
    reqs = [make_req(i, 10, 40) for i in range(6)]
    sched = create_scheduler(cfg)
    outs = drive(sched, reqs)
    assert sched.stats.num_preemptions > 0
    assert sum(len(o.preempted_req_ids) for o in outs) == sched.stats.num_preemptions
    assert_finished_correctly(reqs)


@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_aging_bounds_the_wait(data):
    """shortest_first with aging: a request r can be overtaken only by a request s arriving
    less than (pred_r - pred_s) / aging_rate after it, so its wait is bounded.

    Bound computed from the config: with a roomy pool (no preemption), M = max_num_seqs slots,
    every request holding a slot at most S steps (S = prefill steps + max output), each slot is
    refilled at least once every S + 1 steps while r waits, and at most K requests can be
    admitted ahead of r (those arriving before arr_r + P_max / aging_rate, P_max = the largest
    prediction). So r waits at most (ceil(K / M) + 1) * (S + 1) steps."""
    aging = data.draw(st.sampled_from([0.5, 2.0, 10.0]))
    seqs = data.draw(st.integers(1, 4))
    budget = 64
    n = data.draw(st.integers(2, 25))
    reqs = []
    for i in range(n):
        mt = data.draw(st.integers(1, 30))
        reqs.append(make_req(i, data.draw(st.integers(1, 20)), mt,
                             float(data.draw(st.integers(0, 40)))))
    cfg = SchedulerConfig.for_policy("predictive", max_num_seqs=seqs,
                                     max_num_batched_tokens=budget, block_size=8,
                                     num_kv_blocks=1000, max_model_len=MAX_LEN,
                                     aging_rate=aging, preemption_victim="newest")
    sched = create_scheduler(cfg)
    drive(sched, reqs)
    assert sched.stats.num_preemptions == 0
    p_max = max(r.sampling_params.max_tokens for r in reqs)
    s_steps = math.ceil(20 / (budget - seqs)) + max(r.sampling_params.max_tokens for r in reqs)
    for r in reqs:
        # Pairwise: who overtook r did so within the aging window.
        for s in reqs:
            if s.arrival_time > r.arrival_time and s.first_scheduled_time < r.first_scheduled_time:
                pr, ps = r.predicted_num_output_tokens, s.predicted_num_output_tokens
                assert s.arrival_time - r.arrival_time <= (pr - ps) / aging + 1e-9
        k = sum(1 for s in reqs if s is not r
                and s.arrival_time < r.arrival_time + p_max / aging)
        bound = (math.ceil(k / seqs) + 1) * (s_steps + 1)
        assert r.first_scheduled_time - r.arrival_time <= bound


def test_without_aging_a_long_request_starves_while_short_ones_keep_coming():
    """The counterpart of the aging bound: aging_rate=0 lets short arrivals overtake forever."""
    def run(aging):
        cfg = SchedulerConfig.for_policy("predictive", max_num_seqs=1,
                                         max_num_batched_tokens=64, block_size=8,
                                         num_kv_blocks=500, max_model_len=MAX_LEN,
                                         aging_rate=aging)
        long = make_req(0, 4, 50, arrival=1.0)
        shorts = [make_req(i, 4, 2, arrival=float(i)) for i in range(1, 80)]
        sched = create_scheduler(cfg)
        drive(sched, [long] + shorts)
        return long.first_scheduled_time - long.arrival_time
    # Each short one holds the only slot for 2 steps (prefill + 1 decode).
    assert run(0.0) >= 2 * 78      # waits for (nearly) every short one
    # Overtaken only by shorts arriving before 1 + (50 - 2) / 5 = 10.6: the 10 at t = 1..10.
    assert run(5.0) <= 2 * 10 + 2


def test_abort_in_every_state_frees_at_once():
    for preset in PRESETS:
        cfg = SchedulerConfig.for_policy(preset, max_num_seqs=2, max_num_batched_tokens=128,
                                         block_size=4, num_kv_blocks=64, max_model_len=128,
                                         enable_prefix_caching=True)
        sched = create_scheduler(cfg)
        reqs = [make_req(i, 20, 30) for i in range(4)]
        for r in reqs:
            sched.add_request(r)
        out = sched.schedule(0.0)
        from llmserve.runner.mock_runner import MockRunner
        sched.update_from_output(out, MockRunner().execute(out), 1.0)
        assert reqs[0].status == RequestStatus.RUNNING
        assert reqs[3].status == RequestStatus.WAITING
        for r in reqs:
            assert sched.abort(r.request_id, 2.0) is r
            assert r.block_ids == [] and r.status == RequestStatus.FINISHED_ABORTED
        assert not sched.has_unfinished()
        sched.block_manager.check_all_free()
        assert sched.schedule(3.0).is_empty
