"""Limits and auth on a server over a mock runner (no model: each step sleeps, tokens follow
mock_token): API key, the waiting-queue bound (429 + Retry-After), the prompt-length limit."""
import threading
import time

import httpx
import openai
import pytest
from server_utils import serve_in_thread, wait_idle

from llmserve.config import EngineConfig
from llmserve.engine import LLMEngine
from llmserve.model.config import get_preset
from llmserve.runner.mock_runner import MockRunner
from llmserve.server.async_engine import AsyncLLMEngine
from llmserve.tokenizer import ByteTokenizer

KEY = "s3cret-key"


class SlowMockRunner(MockRunner):
    def execute(self, sched_out):
        time.sleep(0.01)
        return super().execute(sched_out)


@pytest.fixture(scope="module")
def mock_server():
    eng = LLMEngine(EngineConfig(max_num_seqs=1, max_model_len=256, num_kv_blocks=64),
                    runner=SlowMockRunner(256), model=(get_preset("tiny"), None, ByteTokenizer()))
    engine = AsyncLLMEngine(eng, "mock", max_waiting_requests=1)
    srv = serve_in_thread(engine, api_key=KEY, max_prompt_tokens=100)
    srv.engine = engine
    yield srv
    srv.stop()


def test_api_key_is_required_and_checked(mock_server):
    body = {"model": "mock", "prompt": "hi", "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                    {"Authorization": "Basic " + KEY}, {"Authorization": "Bearer " + KEY[:-1]}):
        r = httpx.post(mock_server.url + "/v1/completions", json=body, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(mock_server.url + "/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=mock_server.url + "/v1", api_key="nope",
                      max_retries=0).models.list()
    client = openai.OpenAI(base_url=mock_server.url + "/v1", api_key=KEY, max_retries=0)
    r = client.completions.create(model="mock", prompt="hi", max_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3
    assert httpx.get(mock_server.url + "/health").status_code == 200   # probes need no key


def test_full_waiting_queue_gets_429_with_retry_after(mock_server):
    client = openai.OpenAI(base_url=mock_server.url + "/v1", api_key=KEY, max_retries=0)
    # One request runs (max_num_seqs=1), one waits (the bound), the next is refused.
    running = client.completions.create(model="mock", prompt="a", max_tokens=200, stream=True)
    next(iter(running))
    # Stream headers come with the first token (so a refusal still gets its own status):
    # the waiting request blocks, hence its thread.
    waited = []
    t = threading.Thread(target=lambda: waited.append(client.completions.create(
        model="mock", prompt="b", max_tokens=2)))
    t.start()
    deadline = time.monotonic() + 10
    while mock_server.engine.stats()["num_waiting"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(openai.RateLimitError) as e:
        client.completions.create(model="mock", prompt="c", max_tokens=2)
    assert e.value.status_code == 429
    assert int(e.value.response.headers["Retry-After"]) >= 1
    assert e.value.body["code"] == "queue_full"
    running.close()
    t.join(30)
    assert waited[0].usage.completion_tokens == 2      # the waiting one still completes
    st = wait_idle(mock_server.engine)
    assert st["kv_blocks_used"] == 0


def test_prompt_token_limit(mock_server):
    r = httpx.post(mock_server.url + "/v1/completions", headers={"Authorization": "Bearer " + KEY},
                   json={"model": "mock", "prompt": "x" * 150, "max_tokens": 2})
    assert r.status_code == 400
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == ("prompt", "prompt_too_long")
