"""Ray replicas behind the driver's router, on a local Ray cluster with 2 tiny-model replicas:
outputs equal the single engine's greedy result (the oracle, computed in this process), a
replica killed mid-run loses nothing (its requests are recomputed elsewhere), and the OpenAI
server fronting the router answers as LLM.generate does.

One module-scoped Ray cluster and router: starting them is most of this file's time. The kill
test runs last, since it leaves one replica.
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
                  poll_wait_s=0.05)
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


def test_killed_replica_loses_no_request(router):
    prompts = _prompts(6, 2)
    sp = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    want = _oracle(prompts, sp)
    results = {}
    done = threading.Semaphore(0)

    def listener(o):
        if isinstance(o, BaseException) or o.finished:
            results[o.request_id if not isinstance(o, BaseException) else id(o)] = o
            done.release()

    ids = [router.submit(p, sp, f"kill-{i}", listener) for i, p in enumerate(prompts)]
    # Kill replica 0 once it has streamed tokens of a request it still holds.
    deadline = time.monotonic() + 120
    while True:
        with router._lock:
            mid_run = [f.request_id for f in router._flights.values()
                       if f.replica == 0 and 0 < len(f.tokens) < sp.max_tokens]
        if mid_run:
            break
        assert time.monotonic() < deadline, "replica 0 never had a request in flight"
        time.sleep(0.01)
    ray.kill(router.actors[0], no_restart=True)
    for _ in prompts:
        assert done.acquire(timeout=180)
    outs = [results[i] for i in ids]
    assert all(not isinstance(o, BaseException) for o in outs), outs
    assert [o.token_ids for o in outs] == want
    assert router.alive == [False, True]
    assert router.num_rerouted >= len(mid_run) >= 1
    # New requests go to the survivor only.
    after = router.generate(prompts[:2], SamplingParams(max_tokens=5, temperature=0.0))
    assert [o.token_ids for o in after] == _oracle(prompts[:2], SamplingParams(
        max_tokens=5, temperature=0.0))


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
    with pytest.raises(ValueError, match="num_replicas"):
        build_engine_client(load_config(path, {"num_replicas": -1}))
