"""Issue 18: the HTTP schema fuzzed against a live server on 127.0.0.1 (the tiny model, so
every accepted value goes through the real step) while well-formed streams run.

Properties: every response is a 2xx, or a 4xx whose `param` names a field of the body (never
a 5xx); an accepted stream ends with [DONE] and no error event; the well-formed streams end
with the text the offline API gives for them; /metrics ends with 0 running, 0 waiting and
0 KV blocks used. Hypothesis is derandomized with a fixed number of examples: it stops by
itself and CI runs the same bodies each time.
"""
import asyncio
import collections
import json
import threading

import httpx
import pytest
from fuzz_strategies import chat_bodies, completion_bodies
from hypothesis import HealthCheck, given, settings

from server_utils import serve_in_thread, tiny_async_engine, wait_idle

from llmserve.sampling_params import SamplingParams

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
TALLY: collections.Counter = collections.Counter()   # (endpoint, outcome): the RESULTS table
ENGINE_KW = dict(max_num_seqs=8, max_model_len=64, max_num_batched_tokens=32,
                 kv_cache_memory_bytes=64 << 20)     # not sized from the host's free memory
WELL_FORMED = [{"model": "tiny", "prompt": p, "max_tokens": 10, "ignore_eos": True,
                "temperature": 0.9, "top_k": 50, "seed": 40 + i, "stream": True}
               for i, p in enumerate(["steady one", "steady two", "3"])]


class Background:
    """The well-formed streams, run again and again until stop(); each result is kept."""

    def __init__(self, url):
        self.url = url
        self.results: list = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()

    async def _one(self, client, body):
        text, done = "", False
        async with client.stream("POST", self.url + "/v1/completions", json=body) as r:
            if r.status_code != 200:
                return ("status", r.status_code)
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    d = json.loads(line[6:])
                    if "error" in d:
                        return ("error", d["error"])
                    text += d["choices"][0]["text"]
        return ("done", text) if done else ("cut", text)

    async def _main(self):
        async with httpx.AsyncClient(timeout=120) as client:
            while not self._stop.is_set():
                self.results.append(await asyncio.gather(
                    *(self._one(client, b) for b in WELL_FORMED)))

    def stop(self):
        self._stop.set()
        self.thread.join(120)


@pytest.fixture(scope="module")
def live():
    engine = tiny_async_engine(**ENGINE_KW)
    srv = serve_in_thread(engine, max_body_bytes=16 * 1024)
    srv.engine = engine
    srv.client = httpx.Client(timeout=120)
    bg = Background(srv.url)
    yield srv
    bg.stop()
    srv.client.close()
    try:
        from engine_utils import engine as offline_engine
        from engine_utils import generate
        tok = engine.tokenizer
        want = generate(offline_engine(**ENGINE_KW),
                        [tok.encode(b["prompt"]) for b in WELL_FORMED],
                        [SamplingParams(max_tokens=10, ignore_eos=True, temperature=0.9,
                                        top_k=50, seed=b["seed"]) for b in WELL_FORMED])
        expected = [("done", o.text) for o in want]
        assert bg.results, "the well-formed streams never ran"
        for round_ in bg.results:
            assert list(round_) == expected
        st = wait_idle(engine)
        assert st["num_running"] == 0 and st["num_waiting"] == 0
        metrics = httpx.get(srv.url + "/metrics").text
        for name in ("llmserve_num_requests_running", "llmserve_num_requests_waiting",
                     "llmserve_kv_blocks_used"):
            assert f"\n{name} 0.0\n" in metrics, name
        assert 'status="5' not in metrics
        engine.engine.scheduler.block_manager.check_all_free()
        print(f"\nschema fuzz: {dict(TALLY)}; well-formed stream rounds: "
              f"{len(bg.results)} x {len(WELL_FORMED)}, all as expected; leaks: none")
    finally:
        srv.stop()


def _send(srv, path: str, body: dict) -> None:
    # allow_nan: JSON has no Infinity/NaN, but Python's json (and so some clients) send them
    raw = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    with srv.client.stream("POST", srv.url + path, content=raw,
                           headers={"Content-Type": "application/json"}) as r:
        data = r.read().decode("utf-8", "replace")
    TALLY[path, f"{r.status_code // 100}xx"] += 1
    assert r.status_code < 500, (body, r.status_code, data)
    if r.status_code >= 400:
        err = json.loads(data)["error"]
        assert err["param"] and str(err["param"]).split(".")[0] in body, (body, err)
    elif body.get("stream") is True:
        lines = [ln for ln in data.splitlines() if ln.startswith("data: ")]
        assert lines[-1] == "data: [DONE]", (body, data[-300:])
        assert not any(ln.startswith('data: {"error"') for ln in lines), (body, data)
    else:
        assert json.loads(data)["choices"], (body, data)


@FUZZ
@given(body=completion_bodies())
def test_completions_schema_fuzz(live, body):
    _send(live, "/v1/completions", body)


@settings(FUZZ, max_examples=30)
@given(body=chat_bodies())
def test_chat_schema_fuzz(live, body):
    _send(live, "/v1/chat/completions", body)
