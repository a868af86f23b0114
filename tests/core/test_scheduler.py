"""Scheduler invariants with the MockRunner (no model)."""
import random

import pytest

from llmserve.core.request import Request, RequestStatus
from llmserve.core.scheduler import Scheduler, SchedulerConfig
from llmserve.runner.mock_runner import MockRunner, mock_token
from llmserve.sampling_params import SamplingParams


def make_req(i, prompt_len, max_tokens, seed=None):
    sp = SamplingParams(max_tokens=max_tokens, ignore_eos=True,
                        seed=seed if seed is not None else i)
    return Request(str(i), list(range(1, prompt_len + 1)), sp, arrival_time=0.0)


def run(sched, runner, check=None, max_steps=100_000):
    now = 0.0
    for _ in range(max_steps):
        if not sched.has_unfinished():
            return
        out = sched.schedule(now)
        if check:
            check(sched, out)
        res = runner.execute(out)
        now += 1.0
        sched.update_from_output(out, res, now)
    raise AssertionError("scheduler did not drain")


def expected_tokens(req):
    seed = req.sampling_tuple[3]
    return [mock_token(seed, k, 1000) for k in range(req.sampling_params.max_tokens)]


@pytest.mark.parametrize("policy", ["chunked", "continuous"])
def test_random_workloads_hold_invariants(policy):
    rnd = random.Random(0)
    for _ in range(30):
        cfg = SchedulerConfig.for_policy(
            policy, max_num_seqs=rnd.choice([1, 2, 4, 8]),
            max_num_batched_tokens=rnd.choice([16, 32, 64]) if policy == "chunked" else 256,
            block_size=rnd.choice([4, 8, 16]), num_kv_blocks=rnd.choice([16, 32, 200]),
            max_model_len=256)
        sched = Scheduler(cfg)
        reqs = []
        for i in range(rnd.randint(1, 20)):
            p = rnd.randint(1, 100)
            r = make_req(i, p, rnd.randint(1, 256 - p))
            try:
                sched.add_request(r)
                reqs.append(r)
            except ValueError:
                pass  # too big for the pool: rejected at the door

        def check(s, out, cfg=cfg):
            assert out.num_scheduled_tokens <= cfg.max_num_batched_tokens
            assert len(s.running) <= cfg.max_num_seqs
            owned = [b for r in s.running for b in r.block_ids]
            assert len(owned) == len(set(owned)), "a block owned twice"
            assert len(owned) + s.block_manager.num_free_blocks == cfg.num_kv_blocks
            for sr in out.scheduled:
                assert len(sr.token_ids) > 0 and sr.num_padding_tokens == 0

        run(sched, MockRunner(), check)
        sched.block_manager.check_all_free()
        for r in reqs:
            assert r.status == RequestStatus.FINISHED_LENGTH
            # Output does not depend on batching, chunking or preemption.
            assert r.output_token_ids == expected_tokens(r)


def test_preemption_recomputes_and_output_is_unchanged():
    cfg = SchedulerConfig.for_policy("chunked", max_num_seqs=8, max_num_batched_tokens=64,
                                     block_size=4, num_kv_blocks=20, max_model_len=128,
                                     admission_watermark=0.0)
    sched = Scheduler(cfg)
    reqs = [make_req(i, 10, 40) for i in range(6)]
    for r in reqs:
        sched.add_request(r)
    run(sched, MockRunner())
    assert sched.stats.num_preemptions > 0
    assert sum(r.num_preemptions for r in reqs) == sched.stats.num_preemptions
    for r in reqs:
        assert r.output_token_ids == expected_tokens(r)
    sched.block_manager.check_all_free()


def test_chunked_prefill_splits_long_prompt_and_decodes_first():
    cfg = SchedulerConfig.for_policy("chunked", max_num_seqs=4, max_num_batched_tokens=32,
                                     block_size=16, num_kv_blocks=64, max_model_len=512)
    sched = Scheduler(cfg)
    short = make_req(0, 4, 10)
    sched.add_request(short)
    out = sched.schedule(0.0)
    sched.update_from_output(out, MockRunner().execute(out), 1.0)
    long = make_req(1, 100, 5)
    sched.add_request(long)
    out = sched.schedule(1.0)
    assert [s.req_id for s in out.scheduled] == ["0", "1"]   # decode first
    assert len(out.scheduled[1].token_ids) == 31 and not out.scheduled[1].sample
    assert out.num_scheduled_tokens == 32


def test_abort_frees_blocks_in_every_state():
    cfg = SchedulerConfig.for_policy("chunked", max_num_seqs=2, max_num_batched_tokens=32,
                                     block_size=4, num_kv_blocks=64, max_model_len=256)
    sched = Scheduler(cfg)
    reqs = [make_req(i, 20, 50) for i in range(4)]
    for r in reqs:
        sched.add_request(r)
    out = sched.schedule(0.0)
    sched.update_from_output(out, MockRunner().execute(out), 1.0)
    assert reqs[0].status == RequestStatus.RUNNING and reqs[3].status == RequestStatus.WAITING
    for r in reqs:
        assert sched.abort(r.request_id) is r
        assert r.block_ids == [] and r.status == RequestStatus.FINISHED_ABORTED
    assert sched.abort("0") is None
    assert not sched.has_unfinished()
    sched.block_manager.check_all_free()
    assert sorted(sched.schedule(2.0).finished_req_ids) == ["0", "1", "2", "3"]


def test_abort_between_schedule_and_update():
    cfg = SchedulerConfig(max_num_batched_tokens=64, block_size=4, num_kv_blocks=64)
    sched = Scheduler(cfg)
    r = make_req(0, 8, 4)
    sched.add_request(r)
    out = sched.schedule(0.0)
    res = MockRunner().execute(out)
    sched.abort("0")
    sched.update_from_output(out, res, 1.0)
    assert r.output_token_ids == [] and r.block_ids == []
    sched.block_manager.check_all_free()


@pytest.mark.parametrize("field,value,match", [
    ("policy", "fifo", "policy must be one of"),
    ("block_size", 12, "block_size must be a power of two"),
    ("max_num_batched_tokens", 8, "max_num_batched_tokens must be >= block_size"),
    ("max_num_seqs", 0, "max_num_seqs must be an int >= 1"),
    ("queue_policy", "lifo", "queue_policy must be one of"),
    ("kv_allocation", "contiguous", "kv_allocation must be one of"),
    ("batching", "dynamic", "batching must be one of"),
    ("preemption_victim", "oldest", "preemption_victim must be one of"),
    ("static_batch_size", 0, "static_batch_size must be an int >= 1"),
    ("aging_rate", -1.0, "aging_rate must be a float >= 0"),
    ("length_bins", (500, 50), "length_bins must be increasing"),
    ("predictor", "magic", "predictor must be one of"),
    ("queue_policy", "shortest_first", "predictor must be set"),
    ("kv_allocation", "reserve_predicted", "predictor must be set"),
])
def test_bad_config_names_the_knob(field, value, match):
    with pytest.raises(ValueError, match=match):
        SchedulerConfig(**{field: value})


def test_request_too_big_for_pool_is_rejected_at_add():
    sched = Scheduler(SchedulerConfig(block_size=16, num_kv_blocks=4, max_model_len=2048))
    with pytest.raises(ValueError, match="needs 5 KV blocks"):
        sched.add_request(make_req(0, 70, 10))
    assert not sched.has_unfinished()


@pytest.mark.parametrize("preset", ["static", "continuous"])
def test_unchunked_presets_need_a_budget_for_whole_prompts(preset):
    with pytest.raises(ValueError, match="max_num_batched_tokens must be >= max_model_len"):
        SchedulerConfig.for_policy(preset, max_num_batched_tokens=512, max_model_len=2048)


def test_static_batching_needs_reserved_kv():
    with pytest.raises(ValueError, match="kv_allocation must be 'reserve_max'"):
        SchedulerConfig.for_policy("static", max_num_batched_tokens=2048, kv_allocation="paged")


def test_presets_set_the_documented_knobs():
    s = SchedulerConfig.for_policy("static", max_num_batched_tokens=2048)
    assert (s.batching, s.chunked_prefill, s.queue_policy, s.kv_allocation) == \
        ("static", False, "fcfs", "reserve_max")
    c = SchedulerConfig.for_policy("continuous", max_num_batched_tokens=2048)
    assert (c.batching, c.chunked_prefill, c.kv_allocation) == ("continuous", False, "paged")
    p = SchedulerConfig.for_policy("predictive", kv_allocation="reserve_predicted")
    assert (p.chunked_prefill, p.queue_policy, p.kv_allocation, p.predictor) == \
        (True, "shortest_first", "reserve_predicted", "oracle")


def test_engine_config_rejects_bad_knobs_when_built():
    from llmserve.config import EngineConfig
    with pytest.raises(ValueError, match="queue_policy must be one of"):
        EngineConfig(queue_policy="lifo")
    with pytest.raises(ValueError, match="aging_rate must be a float >= 0"):
        EngineConfig(policy="predictive", aging_rate=-0.5)
    with pytest.raises(ValueError, match="static_batch_size must be an int >= 1"):
        EngineConfig(policy="static", max_num_batched_tokens=2048, static_batch_size=0)
    with pytest.raises(ValueError, match="'enable_prefix_caching' must be bool"):
        EngineConfig(enable_prefix_caching="yes")
    cfg = EngineConfig(policy="predictive", length_bins="20,200", queue_policy="length_bins")
    assert cfg.scheduler_config(10).length_bins == (20, 200)
