"""The OpenAI API through the official `openai` client against a live server (tiny model):
results checked against LLM.generate (offline, its own copy of the weights), usage against
the tokenizer, errors by status, type and param."""
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import openai
import pytest
from engine_utils import tiny_model

from llmserve import LLM
from llmserve.sampling_params import SamplingParams

NO_EOS = {"ignore_eos": True}
PROMPTS = ["The capital of France is", "def fib(n):", "Once upon a time", "1, 2, 3, 4,"]


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


@pytest.fixture(scope="module")
def oracle():
    """Greedy outputs of the offline engine for PROMPTS (16 tokens) and the chat prompt."""
    # LLM.generate with its own weights (same preset and seed) and the server's engine
    # config, so the compiled step shapes are shared.
    llm = LLM("tiny", max_num_seqs=32, max_model_len=256, max_num_batched_tokens=256)
    # top_logprobs leaves tokens and logprobs as they are (tests/runner/test_top_logprobs.py).
    sp = SamplingParams(max_tokens=16, temperature=0.0, logprobs=True, top_logprobs=5)
    chat_prompt = "<|system|>\nBe brief.\n<|user|>\nHi there\n<|assistant|>\n"   # by hand
    outs = llm.generate(PROMPTS + [chat_prompt], sp)
    return {"completions": outs[:-1], "chat": outs[-1]}


def tok():
    return tiny_model()[2]


def test_models_and_health(tiny_server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    r = httpx.get(tiny_server.url + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_greedy_completions_equal_llm_generate(client, oracle):
    # Sent concurrently, so the server batches them differently from the offline run.
    def one(p):
        return client.completions.create(model="tiny", prompt=p, max_tokens=16, temperature=0)
    with ThreadPoolExecutor(len(PROMPTS)) as ex:
        got = list(ex.map(one, PROMPTS))
    for p, r, want in zip(PROMPTS, got, oracle["completions"]):
        assert r.choices[0].text == want.text
        assert r.choices[0].finish_reason == want.finish_reason
        assert r.usage.prompt_tokens == len(tok().encode(p))
        assert r.usage.completion_tokens == len(want.token_ids)
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_token_id_prompt_and_logprobs(client, oracle):
    ids = tok().encode(PROMPTS[1])
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=16, temperature=0,
                                  logprobs=0)
    want = oracle["completions"][1]
    c = r.choices[0]
    assert c.text == want.text
    assert r.usage.prompt_tokens == len(ids)
    assert len(c.logprobs.token_logprobs) == len(want.token_ids)
    for a, b in zip(c.logprobs.token_logprobs, want.logprobs):
        assert a == pytest.approx(b, abs=1e-3)
    assert "".join(c.logprobs.tokens) == tok().decode(want.token_ids)


def _expected_top(want, j, n):
    """The offline engine's n alternatives at token j as OpenAI's {text: logprob} (two ids
    with the same text share a key; the more likely one's value stays)."""
    d = {}
    for t, v in want.top_logprobs[j][:n]:
        d.setdefault(tok().decode([t]), v)
    return d


def _check_completion_top(lp, want, n):
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) \
        == len(want.token_ids)
    for j, (t, tlp, top) in enumerate(zip(lp.tokens, lp.token_logprobs, lp.top_logprobs)):
        exp = _expected_top(want, j, n)
        assert top.keys() == exp.keys() and 1 <= len(top) <= n
        for k in exp:
            assert top[k] == pytest.approx(exp[k], abs=1e-3)
        # Greedy: the chosen token is the most likely one, with its own logprob.
        assert tlp == pytest.approx(want.logprobs[j], abs=1e-3)
        assert top[t] == pytest.approx(tlp, abs=1e-6) == max(top.values())


def test_completion_top_logprobs_stream_and_not(client, oracle):
    want = oracle["completions"][1]
    kw = dict(model="tiny", prompt=PROMPTS[1], max_tokens=16, temperature=0, logprobs=3)
    r = client.completions.create(**kw)
    assert r.choices[0].text == want.text
    _check_completion_top(r.choices[0].logprobs, want, 3)
    toks, tlps, tops = [], [], []
    for ev in client.completions.create(stream=True, **kw):
        for c in ev.choices:
            if c.logprobs is not None:
                toks += c.logprobs.tokens
                tlps += c.logprobs.token_logprobs
                tops += c.logprobs.top_logprobs
    _check_completion_top(SimpleNamespace(tokens=toks, token_logprobs=tlps, top_logprobs=tops),
                          want, 3)


def _check_chat_top(content, want, n):
    assert len(content) == len(want.token_ids)
    for j, e in enumerate(content):
        assert e.token == tok().decode([want.token_ids[j]])
        assert e.logprob == pytest.approx(want.logprobs[j], abs=1e-3)
        assert e.bytes == list(e.token.encode("utf-8"))
        assert len(e.top_logprobs) == n
        alts = want.top_logprobs[j][:n]
        assert [a.token for a in e.top_logprobs] == [tok().decode([t]) for t, _ in alts]
        for a, (_, v) in zip(e.top_logprobs, alts):
            assert a.logprob == pytest.approx(v, abs=1e-3)
            assert a.bytes == list(a.token.encode("utf-8"))
        assert e.top_logprobs[0].token == e.token
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-6)


def test_chat_top_logprobs_stream_and_not(client, oracle):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    want = oracle["chat"]
    kw = dict(model="tiny", messages=msgs, max_tokens=16, temperature=0, logprobs=True,
              top_logprobs=5)
    r = client.chat.completions.create(**kw)
    assert r.choices[0].message.content == want.text
    _check_chat_top(r.choices[0].logprobs.content, want, 5)
    content = []
    for ev in client.chat.completions.create(stream=True, **kw):
        for c in ev.choices:
            if c.logprobs is not None and c.logprobs.content:
                content += c.logprobs.content
    _check_chat_top(content, want, 5)
    # logprobs=true alone: the chosen tokens, no alternatives (as before).
    r0 = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=4,
                                        temperature=0, logprobs=True)
    entries = r0.choices[0].logprobs.content
    assert entries and all(e.top_logprobs == [] for e in entries)


def _stream_completion(client, **kw):
    chunks, times, usage, finish = [], [], None, None
    for ev in client.completions.create(model="tiny", stream=True,
                                        stream_options={"include_usage": True}, **kw):
        if ev.usage is not None:
            usage = ev.usage
        for c in ev.choices:
            if c.text:
                chunks.append(c.text)
                times.append(time.perf_counter())
            finish = c.finish_reason or finish
    return chunks, times, usage, finish


def test_streaming_is_incremental_and_equals_non_streamed(client, oracle):
    chunks, times, usage, finish = _stream_completion(client, prompt=PROMPTS[2], max_tokens=48,
                                                      temperature=0, extra_body=NO_EOS)
    full = client.completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=48,
                                     temperature=0, extra_body=NO_EOS)
    assert "".join(chunks) == full.choices[0].text
    assert full.choices[0].text.startswith(oracle["completions"][2].text.rstrip("\ufffd"))
    # Incremental: many events, spread over the generation rather than one burst at the end.
    assert len(chunks) >= 4
    assert times[-1] - times[0] > 0.05
    assert usage.completion_tokens == 48 == full.usage.completion_tokens
    assert usage.prompt_tokens == full.usage.prompt_tokens
    assert finish == "length"


def test_chat_and_chat_streaming(client, oracle):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    want = oracle["chat"]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=16,
                                       temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.text
    assert r.usage.prompt_tokens == len(want.prompt_token_ids)
    assert r.usage.completion_tokens == len(want.token_ids)
    parts, usage, roles = [], None, []
    for ev in client.chat.completions.create(model="tiny", messages=msgs, max_tokens=16,
                                             temperature=0, stream=True,
                                             stream_options={"include_usage": True}):
        usage = ev.usage or usage
        for c in ev.choices:
            roles.append(c.delta.role)
            parts.append(c.delta.content or "")
    assert roles[0] == "assistant"
    assert "".join(parts) == want.text
    assert usage.completion_tokens == len(want.token_ids)
    # list-of-parts content renders like a string
    r2 = client.chat.completions.create(
        model="tiny", max_tokens=16, temperature=0,
        messages=[msgs[0], {"role": "user", "content": [{"type": "text", "text": "Hi "},
                                                        {"type": "text", "text": "there"}]}])
    assert r2.choices[0].message.content == want.text


def test_stop_strings_and_stop_token_ids(client, oracle):
    base = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=40,
                                     temperature=0, extra_body=NO_EOS)
    text = base.choices[0].text
    stop = text[10:12]
    cut = text.find(stop)
    r = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=40,
                                  temperature=0, extra_body=NO_EOS, stop=[stop, "\x00never"])
    assert r.choices[0].text == text[:cut]
    assert r.choices[0].finish_reason == "stop"
    chunks, _, usage, finish = _stream_completion(client, prompt=PROMPTS[0], max_tokens=40,
                                                  temperature=0, extra_body=NO_EOS, stop=stop)
    assert "".join(chunks) == text[:cut] and finish == "stop"
    assert usage.completion_tokens < 40
    # stop_token_ids: ends at the first occurrence of the 6th greedy token, which is counted
    want = oracle["completions"][0].token_ids
    stop_id = want[5]
    first = want.index(stop_id)
    r = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=16, temperature=0,
                                  extra_body={"stop_token_ids": [stop_id]})
    assert r.usage.completion_tokens == first + 1
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == tok().decode(want[:first + 1])


def test_seed_makes_sampling_reproducible(client):
    kw = dict(model="tiny", prompt=PROMPTS[3], max_tokens=24, temperature=1.0, top_p=0.9,
              extra_body={"top_k": 50})
    a = client.completions.create(seed=7, **kw).choices[0].text
    b = client.completions.create(seed=7, **kw).choices[0].text
    c = client.completions.create(seed=8, **kw).choices[0].text
    assert a == b
    assert a != c


# ---- errors -----------------------------------------------------------------------------
def _post(url, body, path="/v1/completions", raw=None, headers=None):
    return httpx.post(url + path, content=raw if raw is not None else json.dumps(body),
                      headers={"Content-Type": "application/json", **(headers or {})},
                      timeout=60)


OK = {"model": "tiny", "prompt": "hello", "max_tokens": 4}


@pytest.mark.parametrize("change,param,code", [
    ({"temperature": "hot"}, "temperature", "invalid_type"),
    ({"max_tokens": 2.5}, "max_tokens", "invalid_type"),
    ({"stream": "yes"}, "stream", "invalid_type"),
    ({"prompt": None}, "prompt", "invalid_type"),
    ({"temperature": -0.5}, "temperature", "invalid_value"),
    ({"top_p": 1.5}, "top_p", "invalid_value"),
    ({"top_p": 0}, "top_p", "invalid_value"),
    ({"top_k": -3}, "top_k", "invalid_value"),
    ({"max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"seed": -1}, "seed", "invalid_value"),
    ({"stop_token_ids": [-4]}, "stop_token_ids", "invalid_value"),
    ({"prompt": ""}, "prompt", "invalid_value"),
    ({"prompt": [1, 2, 100000]}, "prompt", "invalid_value"),
    ({"prompt": ["a", "b"]}, "prompt", "unsupported"),
    ({"max_tokens": 250, "prompt": "x" * 10}, "prompt", "context_length_exceeded"),
    ({"model": "gpt-4"}, "model", "model_not_found"),
    ({"model": "../../etc/passwd"}, "model", "model_not_found"),
    ({"n": 2}, "n", "unsupported"),
    ({"best_of": 3}, "best_of", "unsupported"),
    ({"max_tokens": 0, "echo": False}, "max_tokens", "invalid_value"),
    ({"echo": True, "logprobs": 6}, "logprobs", "invalid_value"),
    ({"logprobs": 6}, "logprobs", "invalid_value"),
    ({"logprobs": -1}, "logprobs", "invalid_value"),
    ({"presence_penalty": 0.5}, "presence_penalty", "unsupported"),
    ({"logit_bias": {"1": 2.0}}, "logit_bias", "unsupported"),
    ({"stop": [""]}, "stop", "invalid_value"),
    ({"stop": ["a"] * 9}, "stop", "invalid_value"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
    ({"frobnicate": 1}, "frobnicate", "unsupported_parameter"),
])
def test_invalid_completion_requests_get_400_naming_the_param(tiny_server, change, param,
                                                              code):
    r = _post(tiny_server.url, {**OK, **change})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["param"], err["code"], err["type"]) == (param, code, "invalid_request_error")
    assert err["message"]


@pytest.mark.parametrize("change,param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"top_logprobs": -1, "logprobs": True}, "top_logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),                  # without logprobs=true
    ({"n": 3}, "n"),
])
def test_invalid_chat_requests_get_400(tiny_server, change, param):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    r = _post(tiny_server.url, {**body, **change}, path="/v1/chat/completions")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_malformed_json_body_too_large_and_unknown_route(tiny_server):
    r = _post(tiny_server.url, None, raw=b'{"model": "tiny", "prompt": ')
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = _post(tiny_server.url, None, raw=b"[1, 2]")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = _post(tiny_server.url, None, raw=b"[" * 20000 + b"]" * 20000)    # too deep to parse
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = _post(tiny_server.url, {**OK, "prompt": "x" * (70 * 1024)})   # limit: 64 KiB
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked():      # no Content-Length: counted as it streams in
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(80):
            yield b"y" * 1024
        yield b'"}'
    r = httpx.post(tiny_server.url + "/v1/completions", content=chunked(), timeout=60)
    assert r.status_code == 413
    r = httpx.get(tiny_server.url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="hi", max_tokens=4, temperature=9.0,
                                  top_p=-1)
    assert e.value.body["param"] in ("top_p", "temperature")
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="hi", max_tokens=4, n=2)
    assert e.value.body["param"] == "n"


def test_server_survives_a_burst_of_bad_requests(tiny_server, client):
    bad = [{**OK, "top_p": 7}, {**OK, "model": 3}, {"prompt": "no model"}]
    errs = []

    def spam():
        for b in bad * 5:
            errs.append(_post(tiny_server.url, b).status_code)
    ts = [threading.Thread(target=spam) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert set(errs) == {400}
    assert client.completions.create(model="tiny", prompt="ok", max_tokens=2).usage


def test_metrics_report_engine_state_and_finished_requests(tiny_server, client):
    def scrape():
        out = {}
        for line in httpx.get(tiny_server.url + "/metrics").text.splitlines():
            if not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out
    before = scrape()
    r = client.completions.create(model="tiny", prompt="count me", max_tokens=5,
                                  temperature=0, extra_body=NO_EOS)
    m = scrape()
    gen = "llmserve_generation_tokens_total"
    assert m[gen] - before.get(gen, 0) == r.usage.completion_tokens == 5
    assert m["llmserve_prompt_tokens_total"] - before.get("llmserve_prompt_tokens_total", 0) \
        == r.usage.prompt_tokens
    for h in ("llmserve_time_to_first_token_seconds_count",
              "llmserve_time_per_output_token_seconds_count",
              "llmserve_e2e_request_latency_seconds_count"):
        assert m[h] - before.get(h, 0) == 1
    for g in ("llmserve_num_requests_running", "llmserve_num_requests_waiting",
              "llmserve_kv_blocks_used", "llmserve_kv_blocks_free", "llmserve_kv_blocks_cached",
              "llmserve_preemptions_total", "llmserve_prefix_cache_hit_tokens_total"):
        assert g in m
    assert m["llmserve_kv_blocks_total"] == tiny_server.engine.stats()["kv_blocks_total"]
    assert m['llmserve_http_responses_total{endpoint="completions",status="200"}'] >= 1


@pytest.mark.parametrize("path,change,param,says", [
    ("/v1/chat/completions", {"max_tokens": 0}, "max_tokens", "max_tokens=0 must be >= 1"),
    ("/v1/chat/completions", {"max_completion_tokens": 0}, "max_completion_tokens",
     "max_completion_tokens=0 must be >= 1"),
    ("/v1/chat/completions", {"max_tokens": -2}, "max_tokens", "max_tokens=-2 must be >= 1"),
    ("/v1/completions", {"max_tokens": -1}, "max_tokens",
     "max_tokens=-1 must be >= 1 (0 only with echo=true)"),
])
def test_bad_max_tokens_message_speaks_the_api(tiny_server, path, change, param, says):
    # The engine's message names SamplingParams.prompt_logprobs, which no HTTP client sends,
    # and a chat max_completion_tokens was reported as max_tokens.
    body = ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
            if "chat" in path else {"model": "tiny", "prompt": "hi"})
    r = _post(tiny_server.url, {**body, **change}, path=path)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and says in err["message"], err
    assert "prompt_logprobs" not in err["message"]
