"""The claims experiments (sim/claims.py): workloads of a given output CV, replay with a
client's max_tokens (requests still end at their trace length), the predictor noise floor."""
import numpy as np
import pytest

from llmserve import bench
from llmserve.sim import claims
from llmserve.workload import WorkloadRequest
from llmserve.workload.replay import replay


def test_lognormal_outputs_have_the_asked_mean_and_cv():
    for cv in (0.3, 1.5):
        x = claims.lognormal_outputs(400_000, 256, cv, np.random.default_rng(0), 10**9)
        assert x.mean() == pytest.approx(256, rel=0.02)
        assert x.std() / x.mean() == pytest.approx(cv, rel=0.05)
    with pytest.raises(ValueError, match="cv"):
        claims.lognormal_outputs(10, 256, 0, np.random.default_rng(0), 100)


def test_variance_workloads_differ_only_in_outputs():
    a = claims.variance_workload(500, 4.0, 256, 0.3, 7, 8192, 2048)
    b = claims.variance_workload(500, 4.0, 256, 2.5, 7, 8192, 2048)
    assert [(w.arrival_s, w.prompt_len) for w in a] == [(w.arrival_s, w.prompt_len) for w in b]
    oa, ob = (np.array([w.output_len for w in x]) for x in (a, b))
    assert ob.std() / ob.mean() > 3 * oa.std() / oa.mean()
    assert max(w.prompt_len + w.output_len for w in a + b) <= 8192


def _setup():
    cfg = {"runner": "sim", "hardware": "h100-80gb",
           "model": {"preset": "llama3-8b", "path": ""},
           "workload": {"kind": "synthetic", "num_requests": 4, "rate": 1.0, "seed": 0,
                        "synthetic": {"lengths": "fixed"}},
           "engine": {"max_num_seqs": 16, "max_num_batched_tokens": 256, "block_size": 16,
                      "num_kv_blocks": 400, "max_model_len": 2048, "static_batch_size": 4},
           "slo": {"ttft_s": 2.0, "tpot_s": 0.1}, "cost_model": {}}
    return bench.make_setup(cfg)


WL = [WorkloadRequest(0.01 * i, 20 + 7 * i, 5 + 13 * i) for i in range(12)]


@pytest.mark.parametrize("fast", [True, False])
def test_client_max_tokens_ends_requests_at_their_trace_length(fast):
    setup = _setup()
    for policy in ("chunked", "chunked+kv_allocation=reserve_max",
                   "predictive+kv_allocation=reserve_predicted"):
        outs = {}
        for cap in (None, 1000):
            eng = setup.make_engine(setup.engine_config(policy))
            res = replay(eng, WL, client_max_tokens=cap, fast_decode=fast)
            assert res.num_requests == len(WL)
            outs[cap] = res
            got = sorted(zip(res.requests["prompt_len"], res.requests["output_len"]))
            assert got == sorted((w.prompt_len, w.output_len) for w in WL), (policy, cap)
        if policy == "chunked":     # paged: max_tokens is never read, nothing changes
            assert np.array_equal(outs[None].steps["step_time"], outs[1000].steps["step_time"])


def test_reserve_max_reserves_the_clients_bound():
    setup = _setup()
    frag = {}
    for cap in (None, 1000):
        eng = setup.make_engine(setup.engine_config("chunked+kv_allocation=reserve_max"))
        res = replay(eng, WL, client_max_tokens=cap)
        st = res.steps
        frag[cap] = float(np.max(st["kv_reserved_slots"]))
    # 12 requests, each reserving prompt + 1000 instead of prompt + its own output
    assert frag[1000] > frag[None]
    with pytest.raises(ValueError, match="client_max_tokens"):
        replay(setup.make_engine(setup.engine_config("chunked")), WL, client_max_tokens=0)


def test_noise_floor_by_hand():
    r = claims.noise_floor([[10, 20, 30], [5, 5]])
    # prompt 1: others' means 25, 20, 15 -> rel 1.5, 0, 0.5; abs 15, 0, 15; prompt 2: 0, 0
    assert r["samples"] == 5
    assert r["median_rel_error"] == pytest.approx(0.0)
    assert r["mean_rel_error"] == pytest.approx(2.0 / 5)
    assert r["mae_tokens"] == pytest.approx(30 / 5)
    r = claims.noise_floor([[10, 30, 20, 20]])
    assert r["split_half_median_rel_error"] == pytest.approx(0.0)


def test_policy_list_names_bad_items():
    assert claims._policy_list("a=chunked;b x=predictive+predictor=noisy_oracle:1.0:0") == [
        ("a", "chunked"), ("b x", "predictive+predictor=noisy_oracle:1.0:0")]
    with pytest.raises(ValueError, match="name=policy_spec"):
        claims._policy_list("chunked")


def test_run_one_uses_the_asked_kv_pool():
    setup = _setup()
    big = claims.run_one(setup, "chunked", WL)
    small = claims.run_one(setup, "chunked", WL, num_kv_blocks=24)
    assert big["preemptions"] == 0 and small["preemptions"] > 0
    assert small["kv_utilization_mean"] > big["kv_utilization_mean"]
    assert small["num_finished"] == len(WL)
