"""Cluster simulator: invariants, the single-replica simulator as oracle, config errors."""
import dataclasses

import numpy as np
import pytest

from llmserve.cluster.cluster_sim import ClusterConfig, ClusterSim, simulate, summarize_cluster
from llmserve.cluster.placement import PlacementConfig
from llmserve.config import EngineConfig
from llmserve.engine import LLMEngine
from llmserve.model.config import get_preset
from llmserve.runner.sim_runner import SimRunner
from llmserve.sim.cost_model import CostModel
from llmserve.sim.hardware import get_hardware
from llmserve.workload import WorkloadRequest
from llmserve.workload.replay import VirtualClock, replay
from llmserve.workload.synthetic import synthetic_workload

FREE = PlacementConfig(decision_base_s=0.0, decision_per_replica_s=0.0)
ENGINE = {"max_num_seqs": 16, "max_num_batched_tokens": 512, "max_model_len": 4096}


def workload(n=120, rate=40.0, seed=0, **kw):
    return synthetic_workload(n, rate, lengths="azure_lognormal", seed=seed, max_model_len=4096,
                              **kw)


def cfg(**kw):
    kw.setdefault("placement", FREE)
    kw.setdefault("engine", ENGINE)
    return ClusterConfig(**kw)


def single_engine_replay(wl, engine, seed=0):
    mc = get_preset("llama3-8b")
    cm = CostModel(mc, get_hardware("h100-80gb"), block_size=16)
    ec = EngineConfig.from_dict({**engine, "model": "llama3-8b", "load_format": "dummy",
                                 "num_kv_blocks": engine.get("num_kv_blocks") or
                                 cm.num_kv_blocks(16, 0.9)})
    eng = LLMEngine(ec, runner=SimRunner(cm), model=(mc, None, None), clock=VirtualClock())
    return replay(eng, wl, seed=seed)


@pytest.mark.parametrize("engine,prefixes", [
    (ENGINE, 0),
    # A small pool: preemptions; shared prefixes with caching: hits.
    ({**ENGINE, "num_kv_blocks": 400, "enable_prefix_caching": True}, 4),
])
def test_one_replica_equals_the_single_replica_simulator(engine, prefixes):
    n = 100
    wl = workload(n, 60.0, num_prefixes=prefixes, prefix_len=64 if prefixes else 0,
                  vocab_size=1000)
    ref = single_engine_replay(wl, engine)
    res = simulate(cfg(replicas="h100-80gb:1", engine=engine, policy="round_robin"), wl)
    a, b = ref.requests, res.requests
    oa, ob = np.argsort(a["arrival"], kind="stable"), np.argsort(b["arrival"], kind="stable")
    assert len(oa) == len(ob) == n
    for f in ("arrival", "first_scheduled", "first_token", "finish", "prompt_len",
              "output_len", "preemptions", "cached_tokens"):
        np.testing.assert_array_equal(a[f][oa], b[f][ob], err_msg=f)
    if prefixes:
        assert b["cached_tokens"].sum() > 0 and b["preemptions"].sum() > 0
    assert res.replicas[0]["steps"] == ref.scheduler_steps


def test_every_request_finishes_once_on_one_replica_with_failures_and_mixed_hardware():
    wl = workload(240, 120.0, seed=3)
    c = cfg(replicas="a100-80gb:2,h100-80gb:2", policy="least_tokens", dead_replicas=(1,),
            failures=((2, 0.8),), placement=PlacementConfig(
                placement="distributed", num_routers=3, staleness_s=0.05))
    res = simulate(c, wl)
    r = res.requests
    assert sorted(r["request"].astype(int).tolist()) == list(range(240))
    assert res.num_aborted == 0 and res.num_rejected == 0
    assert res.num_rerouted > 0
    per = {x["id"]: x for x in res.replicas}
    assert per[1]["dispatched"] == 0 and per[1]["finished"] == 0
    # Nothing finished on replica 2 after it died.
    assert (r["finish"][r["replica"] == 2] <= 0.8).all()
    assert sum(x["finished"] for x in res.replicas) == 240
    assert [x["hardware"] for x in res.replicas] == ["a100-80gb"] * 2 + ["h100-80gb"] * 2
    assert sum(x["decisions"] for x in res.routers) == 240 + res.num_rerouted


def test_dead_replicas_are_never_chosen_by_any_policy():
    wl = workload(60, 60.0, seed=5)
    for policy in ("round_robin", "random", "least_requests", "least_tokens", "power_of_two",
                   "kv_aware", "prefix_aware", "predicted_work"):
        res = simulate(cfg(replicas="h100-80gb:3", policy=policy, dead_replicas=(0, 2)), wl)
        assert set(res.requests["replica"].astype(int)) == {1}, policy


def test_slower_hardware_gives_slower_tokens():
    wl = [WorkloadRequest(0.0, 500, 200), WorkloadRequest(0.0, 500, 200)]
    res = simulate(cfg(replicas="a100-80gb:1,h100-80gb:1", policy="round_robin"), wl)
    r = res.requests
    tpot = (r["finish"] - r["first_token"]) / (r["output_len"] - 1)
    a100, h100 = tpot[r["replica"] == 0][0], tpot[r["replica"] == 1][0]
    # Decode of one sequence is weight-bandwidth bound: about the HBM bandwidth ratio.
    assert 1.4 < a100 / h100 < 1.7


def test_decision_cost_queues_requests_fifo():
    # Three requests at t=0 through one router costing 10 ms each: they reach their (idle)
    # replicas at 10, 20 and 30 ms and are scheduled then.
    wl = [WorkloadRequest(0.0, 100, 5) for _ in range(3)]
    c = cfg(replicas="h100-80gb:3", policy="round_robin",
            placement=PlacementConfig(decision_base_s=0.01, decision_per_replica_s=0.0))
    res = simulate(c, wl)
    r = res.requests
    o = np.argsort(r["request"])
    np.testing.assert_allclose(r["first_scheduled"][o], [0.01, 0.02, 0.03])
    assert sorted(r["replica"].astype(int)) == [0, 1, 2]
    m = summarize_cluster(res, slo_ttft_s=1.0, slo_tpot_s=1.0)
    assert m["router_wait_mean_s"] == pytest.approx((0 + 0.01 + 0.02) / 3)


def test_stale_views_herd_without_local_accounting():
    # One router, a snapshot that never refreshes during the burst, least_requests: without
    # counting its own dispatches it sends the whole burst to replica 0; with them it spreads.
    wl = [WorkloadRequest(0.001 * i, 100, 50) for i in range(8)]
    for local, want in ((False, [8, 0, 0, 0]), (True, [2, 2, 2, 2])):
        c = cfg(replicas="h100-80gb:4", policy="least_requests", placement=PlacementConfig(
            placement="distributed", num_routers=1, staleness_s=100.0, decision_base_s=0.0,
            decision_per_replica_s=0.0, local_accounting=local))
        res = simulate(c, wl)
        assert [x["dispatched"] for x in res.replicas] == want


def test_load_view_tracks_outstanding_tokens():
    # Two requests on one replica: after dispatch the router sees prompt + client max_tokens,
    # the load samples hold the true work (prompt + true output); after all finished, zero.
    wl = [WorkloadRequest(0.0, 100, 10), WorkloadRequest(0.0, 50, 20)]
    sim = ClusterSim(cfg(replicas="h100-80gb:1", policy="predicted_work", client_max_tokens=64,
                         time_limit_s=1e-9))
    sim.run(wl)
    v = sim.live.view
    assert v.outstanding_tokens[0] == (100 + 64) + (50 + 64)
    assert v.prefill_tokens[0] == 150 and v.predicted_work[0] == 30     # oracle predictor
    sim = ClusterSim(cfg(replicas="h100-80gb:1", policy="round_robin", client_max_tokens=64))
    res = sim.run(wl)
    assert res.samples["outstanding"][0, 0] == (100 + 10) + (50 + 20)
    v = sim.live.view
    assert v.outstanding_tokens[0] == 0 and v.num_running[0] == 0 and v.num_waiting[0] == 0


def test_shared_prefixes_prefix_aware_hits_more_than_round_robin():
    wl = synthetic_workload(200, 80.0, lengths="fixed", fixed_prompt_len=32, fixed_output_len=16,
                            num_prefixes=4, prefix_len=512, vocab_size=1000, seed=2)
    eng = {**ENGINE, "enable_prefix_caching": True}
    hit = {}
    for p in ("round_robin", "prefix_aware"):
        m = summarize_cluster(simulate(cfg(replicas="h100-80gb:4", policy=p, engine=eng), wl),
                              slo_ttft_s=1.0, slo_tpot_s=1.0)
        hit[p] = m["prefix_hit_rate"]
    # Round robin computes each of the 4 prefixes on each of the 4 replicas (16 misses),
    # prefix_aware about once.
    assert hit["prefix_aware"] > hit["round_robin"]


def _replica_per_request(res) -> np.ndarray:
    r = res.requests
    return r["replica"][np.argsort(r["request"])].astype(int)


@pytest.mark.parametrize("routers,replicas,staleness,workers", [
    (4, 8, 0.0, 1),     # K divides N: requests jN..jN+N-1 reach N distinct replicas
    (3, 8, 0.0, 1),     # it does not
    (4, 8, 0.05, 2),    # the worker processes' driver builds the same routers
])
def test_distributed_round_robin_routers_start_apart(routers, replicas, staleness, workers):
    # A uniform stream, request i to router i % K, free decisions (dispatch order = arrival
    # order). Routers that all start at replica 0 send runs of K requests to one replica.
    n = 4 * routers * replicas
    wl = [WorkloadRequest(0.002 * i, 32, 4) for i in range(n)]
    c = cfg(replicas=f"h100-80gb:{replicas}", policy="round_robin", num_workers=workers,
            placement=PlacementConfig(placement="distributed", num_routers=routers,
                                      staleness_s=staleness, decision_base_s=0.0,
                                      decision_per_replica_s=0.0))
    seq = _replica_per_request(simulate(c, wl))
    assert len(seq) == n
    runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, seq, -1]) != 0))
    per_window = max(np.bincount(seq[s:s + replicas], minlength=replicas).max()
                     for s in range(n - replicas + 1))
    # Any N consecutive requests: at most 2 to one replica (K routers starting together: K).
    assert per_window <= 2
    if replicas % routers == 0:
        assert runs.max() == 1
        assert (np.sort(seq.reshape(-1, replicas), axis=1) == np.arange(replicas)).all()
    else:
        assert runs.max() <= 2
    assert np.bincount(seq, minlength=replicas).tolist() == [n // replicas] * replicas


def test_distributed_random_routers_draw_apart():
    # Each router's random stream is its own: with one seed for all, router k's j-th choice
    # would be router 0's j-th choice.
    k, n = 4, 256
    wl = [WorkloadRequest(0.002 * i, 32, 4) for i in range(n)]
    c = cfg(replicas="h100-80gb:8", policy="random", placement=PlacementConfig(
        placement="distributed", num_routers=k, decision_base_s=0.0, decision_per_replica_s=0.0))
    seq = _replica_per_request(simulate(c, wl))
    per_router = [seq[j::k].tolist() for j in range(k)]
    assert all(per_router[a] != per_router[b] for a in range(k) for b in range(a + 1, k))
    # Independent draws agree about 1 time in 8.
    assert np.mean(np.array(per_router[0]) == np.array(per_router[1])) < 0.3


@pytest.mark.parametrize("kw,field", [
    ({"policy": "fastest"}, "router.policy"),
    ({"replicas": "h100-80gb:0"}, "replicas"),
    ({"replicas": "tpu:3"}, "replicas"),
    ({"placement": {"placement": "distributed", "staleness_s": -1.0}}, "staleness_s"),
    ({"placement": {"placement": "centralized", "num_routers": 2}}, "num_routers"),
    ({"placement": {"placement": "everywhere"}}, "placement"),
    ({"placement": {"decision_base_s": -1e-3}}, "decision_base_s"),
    ({"dead_replicas": (0, 1)}, "dead_replicas"),
    ({"failures": ((9, 1.0),)}, "failures"),
    ({"router_options": {"imbalance_rel": 0.1}, "policy": "prefix_aware"}, "imbalance_rel"),
    ({"client_max_tokens": 0}, "client_max_tokens"),
])
def test_config_errors_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        ClusterConfig.from_dict({"replicas": "h100-80gb:2", **kw})


def test_unknown_config_field():
    with pytest.raises(ValueError, match="replica_count"):
        ClusterConfig.from_dict({"replica_count": 3})


# ---- several processes (parallel.py) ------------------------------------------------------
DIST = PlacementConfig(placement="distributed", num_routers=3, staleness_s=0.05)


@pytest.mark.parametrize("policy,engine", [
    ("power_of_two", ENGINE),
    ("round_robin", ENGINE),    # its routers' start offsets
    # Drawn token ids travel to the workers; prefix hits; predictions counted down there.
    ("prefix_aware", {**ENGINE, "enable_prefix_caching": True}),
    ("predicted_work", {**ENGINE, "num_kv_blocks": 300}),
    # Free decisions: each made at its arrival; arrivals on the refresh grid hit the tie
    # between a decision and a refresh at the same time.
    ("least_tokens", None),
])
def test_workers_equal_the_single_process_run(policy, engine):
    # Oracle: the single-process run, whose snapshot refresh times are the workers' windows.
    wl = workload(300, 150.0, num_prefixes=4, prefix_len=64, vocab_size=1000)
    placement = DIST
    if engine is None:
        engine = ENGINE
        placement = PlacementConfig(placement="distributed", num_routers=3, staleness_s=0.03,
                                    decision_base_s=0.0, decision_per_replica_s=0.0)
        grid = []                   # the refresh times, computed as the simulator does
        for j in range(3):
            t = 0.03 * (j + 1) / 3
            for _ in range(len(wl)):
                grid.append(t)
                t += 0.03
        grid = sorted(grid)[::3]    # every third: ~100 req/s, each at a refresh
        wl = [dataclasses.replace(w, arrival_s=grid[k]) for k, w in enumerate(wl)]
    runs = [simulate(cfg(replicas="h100-80gb:8", engine=engine, policy=policy,
                         placement=placement, num_workers=nw), wl) for nw in (1, 2)]
    a, b = (r.requests for r in runs)
    oa, ob = np.argsort(a["request"]), np.argsort(b["request"])
    assert len(oa) == len(ob) == 300
    for f in a:
        np.testing.assert_array_equal(a[f][oa], b[f][ob], err_msg=f)
    assert len(set(b["replica"].tolist())) == 8
    for f in ("t", "outstanding", "requests", "alive"):
        np.testing.assert_array_equal(runs[0].samples[f], runs[1].samples[f], err_msg=f)
    for ra, rb in zip(runs[0].replicas, runs[1].replicas):
        assert ra == rb
    assert runs[0].end == runs[1].end
    assert [r["decisions"] for r in runs[0].routers] == [r["decisions"] for r in runs[1].routers]


@pytest.mark.parametrize("kw,msg", [
    ({"placement": FREE, "num_workers": 2}, "num_workers"),   # centralized: no lookahead
    ({"placement": PlacementConfig(placement="distributed", num_routers=2), "num_workers": 2},
     "staleness_s"),
    ({"placement": DIST, "num_workers": 9}, "num_workers"),
    ({"placement": DIST, "num_workers": 2, "failures": ((0, 1.0),)}, "failures"),
    ({"placement": DIST, "num_workers": 0}, "num_workers"),
])
def test_workers_config_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        cfg(replicas="h100-80gb:8", policy="power_of_two", **kw)
