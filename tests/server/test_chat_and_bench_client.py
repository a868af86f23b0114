"""Chat templates (a checkpoint's tokenizer_config.json, named template lists, the sandbox,
errors), the bench client's arrival modes and statistics against a mock-runner server, and
the server config's secure defaults."""
import asyncio
import json
import time

import pytest
from server_utils import REPO, serve_in_thread

from llmserve.config import EngineConfig
from llmserve.engine import LLMEngine
from llmserve.model.config import get_preset
from llmserve.runner.mock_runner import MockRunner
from llmserve.server import bench_client as bc
from llmserve.server.async_engine import AsyncLLMEngine
from llmserve.server.chat import (
    DEFAULT_CHAT_TEMPLATE,
    ChatTemplate,
    ChatTemplateError,
    read_chat_template,
)
from llmserve.tokenizer import ByteTokenizer

# Llama-3-style: BOS, headers per message, refuses a conversation not starting with a user.
LLAMA3 = ("{{ bos_token }}{% if messages[0]['role'] == 'assistant' %}"
          "{{ raise_exception('Conversation must start with a user message') }}{% endif %}"
          "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
          "{% endif %}")


def test_checkpoint_chat_template_is_read_and_rendered(tmp_path):
    assert read_chat_template(None) == DEFAULT_CHAT_TEMPLATE
    assert read_chat_template(str(tmp_path)) == DEFAULT_CHAT_TEMPLATE   # no config file
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": LLAMA3}))
    t = ChatTemplate(read_chat_template(str(tmp_path)), bos_token="<s>")
    out = t.render([{"role": "system", "content": "Be brief. "},
                    {"role": "user", "content": "Hi"}])
    assert out == ("<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                   "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n")
    with pytest.raises(ChatTemplateError, match="must start with a user"):
        t.render([{"role": "assistant", "content": "x"}])
    # a list of named templates: the one named "default"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "D"}]}))
    assert read_chat_template(str(tmp_path)) == "D"


def test_template_sandbox_blocks_python_internals():
    t = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ChatTemplateError):
        t.render([{"role": "user", "content": "x"}])


def test_server_config_defaults_are_safe():
    import importlib.util
    import os
    spec = importlib.util.spec_from_file_location("serve_cfg",
                                                  os.path.join(REPO, "configs", "serve.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    assert c.host == "127.0.0.1" and c.max_body_bytes > 0 and c.max_waiting_requests > 0


class PacedMockRunner(MockRunner):
    def execute(self, sched_out):
        time.sleep(0.005)
        return super().execute(sched_out)


@pytest.fixture(scope="module")
def mock_url():
    eng = LLMEngine(EngineConfig(max_num_seqs=8, max_model_len=256, num_kv_blocks=256),
                    runner=PacedMockRunner(256),
                    model=(get_preset("tiny"), None, ByteTokenizer()))
    srv = serve_in_thread(AsyncLLMEngine(eng, "mock"))
    yield srv.url
    srv.stop()


@pytest.mark.parametrize("mode,kw", [("poisson", {"rate": 40.0}), ("trace", {"time_scale": 0.5}),
                                     ("concurrency", {"concurrency": 4})])
def test_bench_client_modes_and_statistics(mock_url, mode, kw):
    reqs = [bc.BenchRequest([65 + i % 20] * (5 + i), 3 + i % 4, arrival_s=0.05 * i)
            for i in range(12)]
    results, dur = asyncio.run(bc.run(mock_url, reqs, model="mock", mode=mode, **kw))
    assert [r.status for r in results] == ["ok"] * 12
    for r, q in zip(results, reqs):
        assert (r.prompt_tokens, r.output_tokens) == (len(q.prompt), q.max_tokens)
        assert 0 < r.ttft_s <= r.e2e_s
        assert r.tpot_s == pytest.approx((r.e2e_s - r.ttft_s) / (q.max_tokens - 1))
    # Each request is held back until its arrival time (never sent early); how late it goes
    # depends on the machine's load, so only a hang is bounded above.
    due = bc.arrival_times(reqs, mode, **{k: v for k, v in kw.items() if k != "concurrency"})
    if mode == "trace":        # 0.05 s gaps scaled by 0.5
        assert due == pytest.approx([0.025 * i for i in range(12)])
    for r, t in zip(results, due):
        assert t - 1e-3 <= r.start_s < t + 10.0
    s = bc.summarize(results, dur, slo_ttft_s=1e9, slo_tpot_s=1e9)
    assert s["completed"] == 12 and s["goodput"] == pytest.approx(s["request_throughput"])
    assert s["total_output_tokens"] == sum(q.max_tokens for q in reqs)
    s0 = bc.summarize(results, dur, slo_ttft_s=0.0, slo_tpot_s=1e9)
    assert s0["goodput"] == 0.0
    assert "Completed" in bc.format_table(s)


def test_bench_client_counts_429_and_errors(mock_url):
    reqs = [bc.BenchRequest("hello", 2)]
    res, _ = asyncio.run(bc.run(mock_url, reqs, model="not-served", mode="concurrency",
                                concurrency=1))
    assert res[0].status == "error" and res[0].http_status == 400
    with pytest.raises(ValueError, match="mode"):
        asyncio.run(bc.run(mock_url, reqs, model="mock", mode="bursty"))
    res, _ = asyncio.run(bc.run(mock_url, reqs, model="mock", mode="concurrency",
                                concurrency=1, endpoint="chat"))
    assert res[0].status == "ok" and res[0].output_tokens == 2
