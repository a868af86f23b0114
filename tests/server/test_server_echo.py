"""Completions echo=true (the prompt, then the completion) with the prompt's logprobs, as
lm-eval-harness asks for loglikelihoods (echo, logprobs, max_tokens=0), through the HTTP layer
with the official client. Prompt logprobs are checked against an independent dense forward of
the tiny model (engine_utils.reference_logprobs), completion tokens against LLM.generate."""
import httpx
import openai
import pytest
from engine_utils import reference_logprobs, tiny_model

from llmserve import LLM
from llmserve.sampling_params import SamplingParams

PROMPT = "The quick brown fox jumps"
NO_EOS = {"ignore_eos": True}


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


def tok():
    return tiny_model()[2]


def check_prompt_part(lp, ids, n):
    """The first len(ids) positions of a completion logprobs object: the echoed prompt."""
    ref = reference_logprobs(ids)
    texts = [tok().decode([t]) for t in ids]
    assert lp.tokens[:len(ids)] == texts
    assert lp.token_logprobs[0] is None
    for j in range(1, len(ids)):
        assert lp.token_logprobs[j] == pytest.approx(ref[j - 1, ids[j]], abs=1e-4)
    if n == 0:
        assert lp.top_logprobs is None
        return
    assert lp.top_logprobs[0] is None
    for j in range(1, len(ids)):
        top = lp.top_logprobs[j]
        want = {}
        for t in ref[j - 1].argsort()[::-1][:n]:
            want.setdefault(tok().decode([int(t)]), ref[j - 1, t])
        want.setdefault(texts[j], ref[j - 1, ids[j]])      # the prompt token too (vLLM)
        assert set(top) == set(want)
        for k, v in want.items():
            assert top[k] == pytest.approx(v, abs=1e-4)


def offsets_consistent(lp, start=0):
    off = start
    for t, o in zip(lp.tokens, lp.text_offset):
        assert o == off
        off += len(t)


def test_echo_max_tokens_zero_is_the_prompt_and_its_logprobs(client):
    r = client.completions.create(model="tiny", prompt=PROMPT, echo=True, logprobs=3,
                                  max_tokens=0, temperature=0)
    c = r.choices[0]
    ids = tok().encode(PROMPT)
    assert c.text == PROMPT and c.finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), 0)
    assert len(c.logprobs.tokens) == len(ids)
    check_prompt_part(c.logprobs, ids, 3)
    offsets_consistent(c.logprobs)


def test_lm_eval_loglikelihood_request(tiny_server):
    # The body lm-eval-harness's OpenAI completions model sends, token ids as the prompt:
    # the continuation's loglikelihood is the sum over its tokens.
    ctx, cont = tok().encode("Question: 2+2? Answer:"), tok().encode(" 4")
    body = {"model": "tiny", "prompt": ctx + cont, "echo": True, "logprobs": 1,
            "max_tokens": 0, "temperature": 0.0}
    r = httpx.post(tiny_server.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    lp = r.json()["choices"][0]["logprobs"]
    ids = ctx + cont
    ref = reference_logprobs(ids)
    got = sum(lp["token_logprobs"][len(ctx):])
    assert got == pytest.approx(sum(ref[j - 1, ids[j]] for j in range(len(ctx), len(ids))),
                                abs=1e-3)
    # is_greedy: each continuation token is its position's most likely one.
    greedy = all(max(lp["top_logprobs"][j], key=lp["top_logprobs"][j].get)
                 == tok().decode([ids[j]]) for j in range(len(ctx), len(ids)))
    assert greedy == all(ref[j - 1].argmax() == ids[j] for j in range(len(ctx), len(ids)))
    assert r.json()["choices"][0]["text"] == tok().decode(ids)


def test_echo_with_completion_stream_and_not(client):
    ids = tok().encode(PROMPT)
    want = LLM("tiny", max_num_seqs=32, max_model_len=256, max_num_batched_tokens=256).generate(
        PROMPT, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, logprobs=True,
                               top_logprobs=2))[0]
    kw = dict(model="tiny", prompt=PROMPT, echo=True, logprobs=2, max_tokens=6, temperature=0,
              extra_body=NO_EOS)
    c = client.completions.create(**kw).choices[0]
    assert c.text == PROMPT + want.text
    lp = c.logprobs
    assert len(lp.tokens) == len(ids) + 6
    check_prompt_part(lp, ids, 2)
    assert lp.tokens[len(ids):] == [tok().decode([t]) for t in want.token_ids]
    for a, b in zip(lp.token_logprobs[len(ids):], want.logprobs):
        assert a == pytest.approx(b, abs=1e-3)
    offsets_consistent(lp)
    assert lp.text_offset[len(ids)] == len(PROMPT)
    # Streamed: the prompt and its logprobs come in the first chunk; the whole equals the
    # non-streamed answer.
    events = [e.choices[0] for e in client.completions.create(stream=True, **kw)
              if e.choices]
    assert events[0].text.startswith(PROMPT)
    assert events[0].logprobs.tokens[:len(ids)] == lp.tokens[:len(ids)]
    assert "".join(e.text for e in events) == c.text
    toks, tlps, offs = [], [], []
    for e in events:
        if e.logprobs is not None:
            toks += e.logprobs.tokens
            tlps += e.logprobs.token_logprobs
            offs += e.logprobs.text_offset
    assert toks == lp.tokens and offs == lp.text_offset
    assert tlps[0] is None
    assert tlps[1:] == pytest.approx(lp.token_logprobs[1:], abs=1e-6)


def test_echo_without_logprobs_and_token_id_prompts(client):
    ids = tok().encode("abc def")
    r = client.completions.create(model="tiny", prompt=ids, echo=True, max_tokens=0)
    assert r.choices[0].text == "abc def" and r.choices[0].logprobs is None
    r = client.completions.create(model="tiny", prompt="xyz", echo=True, max_tokens=3,
                                  temperature=0, extra_body=NO_EOS)
    assert r.choices[0].text.startswith("xyz") and r.usage.completion_tokens == 3
    r = client.completions.create(model="tiny", prompt=ids, echo=True, logprobs=0,
                                  max_tokens=0)
    check_prompt_part(r.choices[0].logprobs, ids, 0)


def test_max_tokens_zero_needs_echo(tiny_server):
    r = httpx.post(tiny_server.url + "/v1/completions",
                   json={"model": "tiny", "prompt": "hi", "max_tokens": 0}, timeout=60)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "max_tokens" and "echo" in err["message"]
