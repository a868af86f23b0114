"""Replay on a virtual clock with a runner of constant step time: every timestamp can be
computed by hand. Also the wall clock, rate scaling, caps and the oracle's true lengths."""
import numpy as np
import pytest

from llmserve.config import EngineConfig
from llmserve.engine import LLMEngine
from llmserve.metrics.summary import latencies, summarize
from llmserve.model.config import get_preset
from llmserve.runner.mock_runner import MockRunner
from llmserve.workload import WorkloadRequest
from llmserve.workload.replay import VirtualClock, prepare, replay

DT = 0.01


def _engine(clock=None, policy="chunked", **kw):
    ec = EngineConfig(policy=policy, num_kv_blocks=kw.pop("num_kv_blocks", 64),
                      max_model_len=256, max_num_batched_tokens=256, **kw)
    return LLMEngine(ec, runner=MockRunner(259, DT), model=(get_preset("tiny"), None, None),
                     clock=clock if clock is not None else VirtualClock(5.0))


def test_virtual_clock_hand_computed():
    # One request at t=0 (prompt 10, 5 outputs), one at t=1.0: each runs alone.
    wl = [WorkloadRequest(0.0, 10, 5), WorkloadRequest(1.0, 20, 3)]
    eng = _engine()
    res = replay(eng, wl)
    rq = res.requests
    # Step 1 prefills and samples token 1 at arrival + DT; each further token one DT later.
    np.testing.assert_allclose(rq["arrival"], [5.0, 6.0])
    np.testing.assert_allclose(rq["first_token"] - rq["arrival"], [DT, DT])
    np.testing.assert_allclose(rq["finish"] - rq["arrival"], [5 * DT, 3 * DT])
    np.testing.assert_allclose(rq["itl"], [DT] * 4 + [DT] * 2)
    assert res.end - res.start == pytest.approx(1.0 + 3 * DT)
    lat = latencies(rq)
    np.testing.assert_allclose(lat["tpot"], [DT, DT])
    m = summarize(res, slo_ttft_s=1.0, slo_tpot_s=1.0, num_kv_blocks=64)
    assert m["num_finished"] == 2 and m["output_throughput_tok_s"] == pytest.approx(8 / 1.03)
    assert m["busy_fraction"] == pytest.approx(8 * DT / 1.03)
    assert res.steps["step_time"].size == 8
    eng.scheduler.block_manager.check_all_free()


def test_queueing_two_simultaneous_requests_share_steps():
    # Both arrive at 0 and fit one step: they prefill together, then decode together.
    wl = [WorkloadRequest(0.0, 10, 4), WorkloadRequest(0.0, 10, 2)]
    res = replay(_engine(), wl)
    np.testing.assert_allclose(res.requests["finish"] - res.requests["arrival"],
                               sorted([4 * DT, 2 * DT]), atol=1e-12)
    assert list(res.steps["seqs"]) == [2, 2, 1, 1]
    assert list(res.steps["tokens"]) == [20, 2, 1, 1]


def test_rate_scale_and_cap():
    wl = [WorkloadRequest(float(t), 4, 2) for t in (10, 12, 14, 16)]
    reqs, cut = prepare(wl, rate_scale=2.0, max_requests=3)
    assert [r.arrival_s for r in reqs] == [0.0, 1.0, 2.0] and cut == 0
    reqs, cut = prepare([WorkloadRequest(0.0, 250, 20, list(range(250)))], max_model_len=256)
    assert (reqs[0].prompt_len, reqs[0].output_len, len(reqs[0].prompt_token_ids)) == (236, 20, 236)
    assert cut == 1
    with pytest.raises(ValueError, match="rate_scale"):
        prepare(wl, rate_scale=0)


def test_time_limit_aborts_the_rest_and_frees_the_pool():
    wl = [WorkloadRequest(0.1 * i, 10, 5) for i in range(20)]
    eng = _engine()
    res = replay(eng, wl, time_limit_s=0.33)
    assert 0 < res.requests["finish"].size < 20
    assert res.num_aborted > 0
    assert not eng.has_unfinished()
    eng.scheduler.block_manager.check_all_free()


def test_rejected_requests_are_counted():
    wl = [WorkloadRequest(0.0, 10, 2), WorkloadRequest(0.0, 200, 50)]
    res = replay(_engine(num_kv_blocks=4), wl)      # 4 blocks x 16 < 250 tokens
    assert res.num_rejected == 1 and res.requests["finish"].size == 1


def test_true_length_reaches_the_request():
    seen = {}
    eng = _engine()
    orig = eng.scheduler.add_request

    def spy(req):
        orig(req)
        seen[req.request_id] = req
    eng.scheduler.add_request = spy
    replay(eng, [WorkloadRequest(0.0, 10, 7)])
    assert seen["0"].true_num_output_tokens == 7
    assert seen["0"].num_output_tokens == 7


def test_same_stream_every_policy():
    from llmserve.core.scheduler import PRESETS
    wl = [WorkloadRequest(0.05 * i, 8 + i % 5, 1 + (7 * i) % 13) for i in range(30)]
    outs = {}
    for p in PRESETS:
        res = replay(_engine(policy=p, static_batch_size=4), wl)
        outs[p] = sorted(zip(res.requests["arrival"], res.requests["output_len"]))
    assert all(v == outs["chunked"] for v in outs.values())


def test_wall_clock_replay():
    import time
    wl = [WorkloadRequest(0.0, 5, 3), WorkloadRequest(0.05, 5, 3)]
    eng = _engine(clock=time.perf_counter)
    res = replay(eng, wl)
    assert not res.virtual
    rq = res.requests
    assert (rq["first_token"] >= rq["arrival"]).all()
    assert rq["arrival"][1] - rq["arrival"][0] == pytest.approx(0.05)
    assert res.end - res.start >= 0.05
