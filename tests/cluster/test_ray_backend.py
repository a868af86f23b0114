"""Ray replicas behind the driver's router, on a local Ray cluster with 2 tiny-model replicas:
outputs equal the single engine's greedy result (the oracle, computed in this process), a
replica killed mid-run loses nothing (its requests are recomputed elsewhere) and is replaced
(then serves again), past max_restarts it stays dead, and the OpenAI server fronting the
router answers as LLM.generate does.

One module-scoped Ray cluster and router (max_restarts=1): starting them is most of this
file's time. The kill tests run last and in order: the first kill is restarted, the second
leaves one replica.
"""
import os
import threading
import time

import numpy as np
import pytest

from llmserve.config import EngineConfig
from llmserve.sampling_params import SamplingParams
from tests.engine_utils import engine, generate

ray = pytest.importorskip("ray")

# Small pool: every replica (and the oracle engine here) allocates its whole KV cache.
ENGINE_KW = dict(model="tiny", max_num_seqs=8, max_num_batched_tokens=128, max_model_len=256)


def _prompts(n, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, int(k)).tolist() for k in rng.integers(4, 60, n)]


def _oracle(prompts, sp):
    outs = generate(engine(**ENGINE_KW), prompts, sp)
    return [o.token_ids for o in outs]


@pytest.fixture(scope="module")
def router():
    from llmserve.cluster.ray_backend import RayRouter
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    r = RayRouter(EngineConfig(**ENGINE_KW), num_replicas=2, policy="round_robin",
                  poll_wait_s=0.05, max_restarts=1, restart_backoff_s=0.1)
    r.start()
    yield r
    r.shutdown()
    ray.shutdown()


def test_two_replicas_equal_single_engine_greedy(router):
    prompts = _prompts(6, 0)
    sp = SamplingParams(max_tokens=12, temperature=0.0)
    before = list(router.finished_per_replica)
    outs = router.generate(prompts, sp)
    assert [o.token_ids for o in outs] == _oracle(prompts, sp)
    assert all(o.finished and o.metrics.ttft is not None for o in outs)
    # round_robin: both replicas served, three each.
    assert [a - b for a, b in zip(router.finished_per_replica, before)] == [3, 3]
    st = router.stats()
    assert st["num_replicas_alive"] == 2 and st["num_in_flight"] == 0


def test_logprobs_and_top_logprobs_cross_the_replicas(router):
    """Per-token logprobs and top-N alternatives come back through Ray as the single engine
    gives them (tokens, chosen logprobs, alternatives)."""
    prompts = _prompts(2, 5)
    sp = SamplingParams(max_tokens=6, temperature=0.0, top_logprobs=3)
    outs = router.generate(prompts, sp)
    want = generate(engine(**ENGINE_KW), prompts, sp)
    for o, w in zip(outs, want):
        assert o.token_ids == w.token_ids
        np.testing.assert_allclose(o.logprobs, w.logprobs, atol=1e-5)
        assert len(o.top_logprobs) == len(o.token_ids)
        for got, exp in zip(o.top_logprobs, w.top_logprobs):
            assert [t for t, _ in got] == [t for t, _ in exp]
            np.testing.assert_allclose([v for _, v in got], [v for _, v in exp], atol=1e-5)


def test_prompt_logprobs_cross_the_replicas(router):
    """Prompt logprobs (and max_tokens=0, the prompt alone) come back through Ray as the
    single engine gives them."""
    prompts = _prompts(2, 6)
    sps = [SamplingParams(max_tokens=0, prompt_logprobs=2),
           SamplingParams(max_tokens=4, temperature=0.0, prompt_logprobs=0)]
    outs = router.generate(prompts, sps)
    want = generate(engine(**ENGINE_KW), prompts, sps)
    assert outs[0].token_ids == [] and outs[0].finish_reason == "length"
    for o, w in zip(outs, want):
        assert o.token_ids == w.token_ids
        assert len(o.prompt_logprobs) == len(w.prompt_logprobs) and o.prompt_logprobs[0] is None
        for got, exp in zip(o.prompt_logprobs[1:], w.prompt_logprobs[1:]):
            assert [t for t, _ in got] == [t for t, _ in exp]
            np.testing.assert_allclose([v for _, v in got], [v for _, v in exp], atol=1e-5)


def test_sampled_requests_get_a_seed_of_their_own(router):
    # Same id and prompt -> same tokens whichever replica runs it (what a recompute after a
    # replica death relies on); a different id draws differently.
    p = _prompts(1, 1)[0]
    sp = SamplingParams(max_tokens=8, temperature=1.0)
    runs = []
    for rid in ("a", "a", "b"):          # round robin: "a" runs on both replicas in turn
        done = threading.Event()
        box = []
        router.submit(p, sp, rid, lambda o, box=box, done=done: (
            box.append(o), done.set() if o.finished else None))
        assert done.wait(60)
        runs.append(box[-1].token_ids)
    assert runs[0] == runs[1] != runs[2]


def test_bad_input_is_a_value_error_before_routing(router):
    with pytest.raises(ValueError, match="max_model_len"):
        router.submit([1] * 250, SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        router.submit([1, 999], SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="num_replicas"):
        from llmserve.cluster.ray_backend import RayRouter
        RayRouter(EngineConfig(**ENGINE_KW), num_replicas=0)
    with pytest.raises(ValueError, match="router.policy"):
        RayRouter(EngineConfig(**ENGINE_KW), num_replicas=2, policy="nearest")
    assert router.stats()["num_in_flight"] == 0


def test_openai_server_over_two_replicas(router):
    from fastapi.testclient import TestClient

    from llmserve.cluster.ray_backend import RayRouterClient
    from llmserve.server.api import build_app
    client = RayRouterClient(router, "tiny", owns_router=False)
    prompts = ["The capital of France is", "Once upon a time"]
    sp = SamplingParams(max_tokens=12, temperature=0.0)
    want = generate(engine(**ENGINE_KW), prompts, sp)
    with TestClient(build_app(client)) as http:
        for prompt, w in zip(prompts, want):
            r = http.post("/v1/completions", json={"model": "tiny", "prompt": prompt,
                                                   "max_tokens": 12, "temperature": 0})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["choices"][0]["text"] == w.text
            assert body["usage"]["completion_tokens"] == len(w.token_ids)
        # Streaming: the deltas add up to the same text.
        with http.stream("POST", "/v1/completions", json={
                "model": "tiny", "prompt": prompts[0], "max_tokens": 12, "temperature": 0,
                "stream": True}) as r:
            import json
            text = "".join(json.loads(line[6:])["choices"][0]["text"]
                           for line in r.iter_lines()
                           if line.startswith("data: {"))
        assert text == want[0].text
        assert http.get("/metrics").status_code == 200


def test_abort_frees_the_replicas_blocks(router):
    got = []
    rid = router.submit(_prompts(1, 3)[0], SamplingParams(max_tokens=200, ignore_eos=True,
                                                          temperature=0.0),
                        listener=got.append)
    deadline = time.monotonic() + 60
    while not got:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    router.abort(rid)
    while True:         # the replicas' next polls report the freed blocks
        st = router.stats()
        if st["kv_blocks_used"] == 0 and st["num_running"] == 0:
            break
        assert time.monotonic() < deadline, st
        time.sleep(0.05)
    assert st["num_in_flight"] == 0 and st["num_aborted"] >= 1
    assert not got[-1].finished and len(got[-1].token_ids) < 200


def _kill_replica_mid_run(router, prompts, sp, tag):
    """Submit prompts, kill replica 0 once it has streamed tokens of a request it still holds,
    and return (outputs in submit order, the requests it held at the kill, the kill time)."""
    results = {}
    done = threading.Semaphore(0)

    def listener(o):
        if isinstance(o, BaseException) or o.finished:
            results[o.request_id if not isinstance(o, BaseException) else id(o)] = o
            done.release()

    ids = [router.submit(p, sp, f"{tag}-{i}", listener) for i, p in enumerate(prompts)]
    deadline = time.monotonic() + 120
    while True:
        with router._lock:
            mid_run = [f.request_id for f in router._flights.values()
                       if f.replica == 0 and 0 < len(f.tokens) < sp.max_tokens]
        if mid_run:
            break
        assert time.monotonic() < deadline, "replica 0 never had a request in flight"
        time.sleep(0.01)
    # no_restart: Ray itself restarts nothing; the replacement is the router's doing.
    ray.kill(router.actors[0], no_restart=True)
    t_kill = time.monotonic()
    for _ in prompts:
        assert done.acquire(timeout=180)
    outs = [results.get(i) for i in ids]
    assert all(o is not None and not isinstance(o, BaseException) for o in outs), results
    return outs, mid_run, t_kill


def _wait_for(cond, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_killed_replica_loses_no_request_and_comes_back(router):
    prompts = _prompts(6, 2)
    sp = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    want = _oracle(prompts, sp)
    old_pid = router.replica_stats[0]["pid"]
    rerouted0 = router.num_rerouted
    outs, mid_run, t_kill = _kill_replica_mid_run(router, prompts, sp, "kill")
    assert [o.token_ids for o in outs] == want
    assert router.num_rerouted - rerouted0 >= len(mid_run) >= 1
    assert router.status[0] in ("restarting", "alive") and router.status[1] == "alive"
    # The replacement: same replica id, a new process, counted once.
    _wait_for(lambda: router.status[0] == "alive", 120, "replica 0 never came back")
    t_back = time.monotonic()
    st = router.replica_states()
    assert [(s.replica_id, s.alive, s.restarts) for s in st] == [(0, True, 1), (1, True, 0)]
    assert router.replica_stats[0]["replica_id"] == 0
    assert router.replica_stats[0]["pid"] != old_pid
    stats = router.stats()
    assert stats["replica_status"] == ["alive", "alive"]
    assert stats["replica_restarts"] == [1, 0] and stats["num_restarts"] == 1
    assert stats["num_replicas_alive"] == 2 and stats["num_in_flight"] == 0
    # It serves again: round robin sends it half of the new requests.
    before = list(router.finished_per_replica)
    sp_new = SamplingParams(max_tokens=8, temperature=0.0)
    after = router.generate(prompts[:4], sp_new)
    t_served = time.monotonic()
    assert [o.token_ids for o in after] == _oracle(prompts[:4], sp_new)
    assert [a - b for a, b in zip(router.finished_per_replica, before)] == [2, 2]
    (rec,) = router.restart_log
    assert rec["replica"] == 0 and rec["restart"] == 1 and rec["down_s"] > 0
    print(f"\nreplica 0: kill -> back in routing {t_back - t_kill:.1f} s (death noticed -> "
          f"ready {rec['down_s']:.1f} s); 4 new requests then {t_served - t_back:.1f} s")


def test_replica_past_max_restarts_stays_dead(router):
    # max_restarts=1 and replica 0 was replaced once (previous test): this death is final.
    assert router.restarts == [1, 0]
    prompts = _prompts(4, 4)
    sp = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)
    want = _oracle(prompts, sp)
    outs, _, _ = _kill_replica_mid_run(router, prompts, sp, "kill2")
    assert [o.token_ids for o in outs] == want
    time.sleep(0.5)                  # several backoffs: no replacement is started
    assert router.status == ["dead", "alive"] and router.alive == [False, True]
    assert router.restarts == [1, 0] and router._starting == [None, None]
    assert [s.restarts for s in router.replica_states()] == [1, 0]
    # New requests go to the survivor only.
    before = list(router.finished_per_replica)
    after = router.generate(prompts[:2], SamplingParams(max_tokens=5, temperature=0.0))
    assert [o.token_ids for o in after] == _oracle(prompts[:2], SamplingParams(
        max_tokens=5, temperature=0.0))
    assert [a - b for a, b in zip(router.finished_per_replica, before)] == [0, 2]


def test_serve_config_knob_builds_the_router_client():
    # No Ray needed: the actors start in the server's lifespan (client.start()).
    from llmserve.cluster.ray_backend import RayRouterClient
    from llmserve.config import load_config
    from llmserve.server.launch import build_engine_client
    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "serve.py")
    cfg = load_config(path, {"num_replicas": 3, "router_policy": "prefix_aware"})
    client, _ = build_engine_client(cfg)
    assert isinstance(client, RayRouterClient)
    assert client.router.num_replicas == 3 and client.router.policy.name == "prefix_aware"
    assert client.router.policy.block_size == cfg.engine.block_size
    assert client.router.max_restarts == 3 and client.router.restart_backoff_s == 1.0
    client, _ = build_engine_client(load_config(path, {"num_replicas": 2,
                                                       "max_replica_restarts": 0}))
    assert client.router.max_restarts == 0
    with pytest.raises(ValueError, match="num_replicas"):
        build_engine_client(load_config(path, {"num_replicas": -1}))


class _FakeActor:
    """Records what the router sends (no Ray): add.remote(...) / abort.remote(...)."""

    def __init__(self):
        self.sent = []
        self.add = type("M", (), {"remote": lambda _, *a: self.sent.append(("add", a[0]))})()
        self.abort = type("M", (), {"remote": lambda _, *a: self.sent.append(("abort", a[0]))})()


def test_requests_wait_for_a_restarting_replica_and_fail_once_none_can_come_back():
    # The bookkeeping alone, without Ray: replica 0 restarting, replica 1 dead for good.
    from llmserve.cluster.ray_backend import RayRouter
    with pytest.raises(ValueError, match="max_restarts"):
        RayRouter(EngineConfig(**ENGINE_KW), num_replicas=1, max_restarts=-1)
    r = RayRouter(EngineConfig(**ENGINE_KW), num_replicas=2, policy="round_robin",
                  max_restarts=2)
    r.actors, r._starting = [_FakeActor(), _FakeActor()], [None, None]
    r.replica_stats = [{}, {}]
    r.alive, r.status, r.restarts = [False, False], ["restarting", "dead"], [1, 2]
    r._by_replica, r.finished_per_replica = [set(), set()], [0, 0]
    r._restart_at, r._died_at, r._ready_by = [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]
    r._pump = object()               # "started"
    got = {}
    sp = SamplingParams(max_tokens=4, temperature=0.0)
    for rid in ("a", "b", "c"):
        r.submit([1, 2, 3], sp, rid, lambda o, rid=rid: got.setdefault(rid, o))
    assert list(r._parked) == ["a", "b", "c"] and r.stats()["num_in_flight"] == 3
    r.abort("b")                     # a parked request is simply dropped
    assert list(r._parked) == ["a", "c"] and r.actors[0].sent == []
    new = _FakeActor()
    r._replica_back(0, new, {"replica_id": 0})
    assert r.actors[0] is new and r.status == ["alive", "dead"]
    assert new.sent == [("add", "a"), ("add", "c")] and not r._parked and not got
    assert [s.restarts for s in r.replica_states()] == [1, 2]
    # Replica 0 dies again, and its last replacement fails to start: nothing can come back,
    # so what waits fails (a listener gets an error, the request is not left hanging).
    r._replica_died(0, RuntimeError("killed"))
    assert r.status[0] == "restarting" and list(r._parked) == ["a", "c"]
    # A replacement that never gets ready (unschedulable, hung) is given up on at its
    # deadline and counts as a failed restart; with one restart left, it is retried.
    r._starting[0], r._ready_by[0] = _FakeActor(), time.monotonic() - 1
    r._start_replacements({})
    assert r._starting[0] is None and r.status[0] == "restarting"
    assert r._restart_at[0] > time.monotonic() and list(r._parked) == ["a", "c"]
    r.restarts[0] = 2                # its last replacement was started...
    r._restart_failed(0, _FakeActor(), RuntimeError("no GPU"))   # ...and died in __init__
    assert r.status == ["dead", "dead"] and not r._parked
    assert sorted(got) == ["a", "c"] and all(isinstance(o, RuntimeError) for o in got.values())
    assert r.stats()["num_in_flight"] == 0 and r.num_failed == 2


def test_replica_reports_the_max_model_len_it_derived():
    # With max_model_len 0 (the default) each replica derives it from the model and its KV
    # pool; the router admits against what the replicas report (it admitted nothing when it
    # checked against the config's 0).
    from llmserve.cluster.ray_backend import ReplicaServer
    rs = ReplicaServer(EngineConfig(model="tiny", max_num_seqs=2, max_num_batched_tokens=128,
                                    kv_cache_memory_bytes=64 << 20), 0)
    try:
        assert rs.ready()["max_model_len"] == rs.engine.config.max_model_len == 4096
    finally:
        rs.shutdown()
