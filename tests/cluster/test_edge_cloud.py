"""The edge/cloud simulation: the same scheduler as the engine, network and energy by hand, the
oracle against every strategy, batch decisions, and config errors that name the field."""
import numpy as np
import pytest

from configs.edge_cloud import get_config
from llmserve.cluster import edge_cloud as ec
from llmserve.workload import WorkloadRequest
from llmserve.workload.synthetic import synthetic_workload


def _cfg(**over):
    c = get_config()
    c.edge.model = "qwen2-0.5b"      # small shapes keep the tests fast
    c.cloud.num_replicas = 1
    for k, v in over.items():
        node, *rest = k.split(".")
        if rest:
            setattr(getattr(c, node), rest[0], v)
        else:
            setattr(c, node, v)
    return ec.make_config(c)


def _workload(n, rate, seed=0):
    return synthetic_workload(n, rate, lengths="azure_lognormal", seed=seed, max_model_len=2048)


def test_edge_device_matches_the_engine_replay():
    """One device of the simulation is the engine's scheduler + SimRunner: replaying the same
    requests through LLMEngine on a virtual clock gives the same token times."""
    from llmserve.config import EngineConfig
    from llmserve.engine import LLMEngine
    from llmserve.runner.sim_runner import SimRunner
    from llmserve.workload.replay import VirtualClock, replay
    cfg = _cfg(**{"network.jitter_mean_s": 0.0})
    wl = _workload(40, 3.0)
    sim = ec.EdgeCloudSim(cfg, wl, "always_edge")
    res = sim.run()
    dev = sim.edge[0]
    sc = dev.scheduler.config
    ecfg = EngineConfig(model="qwen2-0.5b", load_format="dummy", max_num_seqs=sc.max_num_seqs,
                        max_num_batched_tokens=sc.max_num_batched_tokens,
                        block_size=sc.block_size, num_kv_blocks=sc.num_kv_blocks,
                        max_model_len=sc.max_model_len, policy="chunked")
    eng = LLMEngine(ecfg, runner=SimRunner(dev.runner.cost_model),
                    model=(ec.model_config("qwen2-0.5b"), None, None), clock=VirtualClock())
    rr = replay(eng, wl)
    req = rr.requests                   # in finish order: match by arrival time
    order = np.argsort(req["arrival"])
    np.testing.assert_allclose(req["arrival"][order], [w.arrival_s for w in wl], atol=1e-12)
    ttft = (req["first_token"] - req["arrival"])[order]
    e2e = (req["finish"] - req["arrival"])[order]
    np.testing.assert_allclose(res["requests"]["ttft_s"], ttft, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(res["requests"]["e2e_s"], e2e, rtol=1e-9, atol=1e-9)


def test_cloud_network_delays_by_hand():
    """A lone request: client TTFT = server TTFT + RTT + prompt and token bytes over the links."""
    cfg = _cfg(**{"network.jitter_mean_s": 0.0})
    wl = [WorkloadRequest(0.0, 1000, 50)]
    cloud = ec.EdgeCloudSim(cfg, wl, "always_cloud")
    r = cloud.run()["requests"]
    dev = cloud.cloud[0]
    up = 0.02 + 8 * (500 + 1000 * 4.0) / 20e6
    down = 0.02 + 8 * 150.0 / 50e6
    # Alone, the request's first token comes after its prefill steps: 1000 tokens at a
    # 2048-token budget is one step, whose time the cost model gives for that batch.
    from llmserve.core.sched_output import ScheduledRequest, SchedulerOutput
    so = SchedulerOutput(1, [ScheduledRequest("0", [1] * 1000, 0, [], True, 0, None)], 1000,
                         [], [])
    prefill = dev.runner.cost_model.step_time(so)
    assert r["ttft_s"][0] == pytest.approx(up + prefill + down, rel=1e-9)
    # All the busy time belongs to the one request.
    assert dev.meter.request_busy_s["0"] == pytest.approx(dev.meter.busy_s)


def test_system_energy_by_hand():
    cfg = _cfg()
    res = ec.simulate(cfg, _workload(30, 2.0), "thompson")
    h = res["makespan_s"] + 5.0
    m = ec.summarize(res, h)
    want = 0.0
    for d in res["devices"]:
        p = d["power"]
        want += p["pue"] * (p["busy_w"] * d["busy_s"]
                            + p["idle_w"] * p["idle_share"] * (h - d["busy_s"]))
    assert m["energy_per_request_j"] == pytest.approx(want / 30)
    # Marginal energy per request = marginal watts x its busy seconds, on its side's device.
    for d in res["devices"]:
        p = d["power"]
        mw = p["pue"] * (p["busy_w"] - p["idle_w"] * p["idle_share"])
        for rid, b in d["request_busy_s"].items():
            assert res["requests"]["marginal_j"][int(rid)] == pytest.approx(mw * b)
    with pytest.raises(ValueError, match="horizon"):
        ec.summarize(res, res["makespan_s"] / 2)


def test_oracle_is_best_per_request_without_queueing():
    """Requests far apart never share a device: each one's outcome depends only on its own
    side, so the greedy oracle is optimal and its reward is the better fixed side's, request by
    request; no strategy does better on average."""
    cfg = _cfg()
    wl = [WorkloadRequest(100.0 * i, p, o) for i, (p, o) in
          enumerate(zip([40, 3000, 900, 1800, 200, 2500], [30, 400, 5, 900, 200, 50]))]
    runs = {s: ec.simulate(cfg, wl, s) for s in ("always_edge", "always_cloud", "ucb",
                                                  "thompson", "oracle")}
    best = np.maximum(runs["always_edge"]["requests"]["reward"],
                      runs["always_cloud"]["requests"]["reward"])
    np.testing.assert_allclose(runs["oracle"]["requests"]["reward"], best, rtol=1e-9)
    for s, r in runs.items():
        assert runs["oracle"]["requests"]["reward"].mean() >= r["requests"]["reward"].mean() \
            - 1e-12, s


def test_oracle_not_worse_than_any_strategy_under_load():
    """With queueing the greedy oracle is not optimal in general (docs/RESULTS.md has a run
    where always_cloud beats it by 0.2%); on this loaded workload it must still lead."""
    cfg = _cfg()
    wl = _workload(60, 6.0, seed=3)
    means = {s: ec.simulate(cfg, wl, s)["requests"]["reward"].mean()
             for s in ("always_edge", "always_cloud", "ucb", "thompson", "ucb:none", "oracle")}
    assert all(means["oracle"] >= v for v in means.values()), means


def test_batch_decisions_respect_window_and_capacity():
    cfg = _cfg(**{"bandit.batch_window_s": 0.5, "bandit.edge_batch_capacity": 2})
    wl = _workload(60, 8.0, seed=1)
    arrival = np.array([w.arrival_s for w in sorted(wl, key=lambda w: w.arrival_s)])
    for strategy in ("ucb", "oracle"):
        r = ec.simulate(cfg, wl, strategy)["requests"]
        wait = r["decided_s"] - arrival
        assert (wait >= -1e-12).all() and (wait <= 0.5 + 1e-9).all()
        assert len(np.unique(r["decided_s"])) < len(wl)     # some batches hold several
        for t in np.unique(r["decided_s"]):
            assert (r["side"][r["decided_s"] == t] == ec.EDGE).sum() <= 2
        # Waiting for the window counts toward TTFT.
        assert (r["ttft_s"] >= wait).all()


def test_bandit_moves_off_an_overloaded_edge():
    """The edge alone cannot keep up (6 req/s on one Jetson): the bandits send most of the
    second half to the cloud and meet the SLO far more often than always_edge."""
    cfg = _cfg(**{"edge.model": "llama3.2-3b"})
    wl = _workload(120, 6.0, seed=2)
    edge = ec.simulate(cfg, wl, "always_edge")["requests"]["met"].mean()
    for s in ("ucb", "thompson"):
        r = ec.simulate(cfg, wl, s)["requests"]
        assert (r["side"][60:] == ec.CLOUD).mean() > 0.6, s
        assert r["met"].mean() > edge + 0.3, s


@pytest.mark.parametrize("path,value,match", [
    ("edge.busy_w", -5.0, "edge.busy_w must be >= 0"),
    ("cloud.idle_w", -1.0, "cloud.idle_w must be >= 0"),
    ("cloud.idle_share", 2.0, "cloud.idle_share"),
    ("edge.num_replicas", 0, "edge.num_replicas must be an int >= 1"),
    ("edge.hardware", "tpu", "hardware must be one of"),
    ("network.rtt_s", -0.1, "network.rtt_s must be >= 0"),
    ("network.uplink_mbps", 0.0, "network.uplink_mbps must be > 0"),
    ("slo.ttft_s", 0.0, "slo.ttft_s must be > 0"),
    ("bandit.context", "weather", "bandit.context must be one of"),
    ("bandit.size_edges", "9,3", "bandit.size_edges must be increasing"),
])
def test_config_errors_name_the_field(path, value, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**{path: value})


def test_unknown_strategy_names_it():
    cfg = _cfg()
    with pytest.raises(ValueError, match="strategy must be one of .*'greedy'"):
        ec.EdgeCloudSim(cfg, _workload(3, 1.0), "greedy")
    with pytest.raises(ValueError, match="only bandits"):
        ec.EdgeCloudSim(cfg, _workload(3, 1.0), "oracle:size")
    with pytest.raises(ValueError, match="context must be one of"):
        ec.EdgeCloudSim(cfg, _workload(3, 1.0), "ucb:weather")


def test_bench_regret_and_claim_follow_the_runs(tmp_path):
    from llmserve.cluster import edge_cloud_bench as bench
    c = get_config()
    c.edge.model = "qwen2-0.5b"
    c.cloud.num_replicas = 1
    c.strategies = "always_edge,always_cloud,thompson,oracle"
    c.rates = "2,8"
    c.workload.num_requests = 25
    res = bench.run(c)
    cfg = ec.make_config(c)
    wl = bench._scaled(bench.base_workload(c.to_dict()), 8.0)
    oracle = ec.simulate(cfg, wl, "oracle")["requests"]["reward"]
    ts = ec.simulate(cfg, wl, "thompson")["requests"]["reward"]
    r8 = res["rates"]["8"]
    np.testing.assert_allclose(r8["regret"]["thompson"], np.cumsum(oracle - ts), atol=1e-5)
    s = r8["summary"]
    row = next(x for x in r8["claim"] if x["strategy"] == "thompson"
               and x["alternative"] == "always_cloud")
    assert row["energy_saving"] == pytest.approx(
        1 - s["thompson"]["energy_per_request_j"] / s["always_cloud"]["energy_per_request_j"])
    assert all(m["horizon_s"] == m["makespan_s"] for m in s.values())
    paths = bench.write_outputs(res, str(tmp_path), figures=False)
    assert "| oracle |" in bench.format_results(res)
    assert (tmp_path / "edge_cloud.json").exists() and paths["json"]
    c.strategies = "always_cloud,magic"
    with pytest.raises(ValueError, match="'magic'"):
        bench.run(c)
    c.strategies = "always_cloud"
    c.rates = "1,-2"
    with pytest.raises(ValueError, match="rates must all be > 0"):
        bench.run(c)


def test_a_small_kv_pool_preempts_and_still_finishes_everything():
    cfg = _cfg(**{"edge.memory_utilization": 0.0328})
    sim = ec.EdgeCloudSim(cfg, _workload(40, 6.0, seed=4), "always_edge")
    assert sim.edge[0].scheduler.config.num_kv_blocks < 600
    res = sim.run()
    assert sim.edge[0].scheduler.stats.num_preemptions > 0
    assert np.isfinite(res["requests"]["e2e_s"]).all()
    assert sim.edge[0].scheduler.block_manager.num_free_blocks == \
        sim.edge[0].scheduler.config.num_kv_blocks
