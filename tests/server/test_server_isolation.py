"""Issue 18 over HTTP: the engine step fails on one request (injected in the runner, so the
whole batch's step raises) while other clients stream; only that request fails, the streams
end with the text the offline API gives for them, and nothing is left in the engine."""
import asyncio
import json

import httpx
from fault_injection import POISON_SEED, FaultyRunner
from server_utils import serve_in_thread, tiny_async_engine, wait_idle

from llmserve.sampling_params import SamplingParams

PROMPTS = ["The quick brown fox", "Hello there, general", "1 2 3 4 5 6", "zzz"]


async def _stream(client, url, body):
    """-> ('done', text) or ('error', message) or (status, body)."""
    text = ""
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return r.status_code, (await r.aread()).decode()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            d = json.loads(line[6:])
            if "error" in d:
                return "error", d["error"]["message"]
            text += d["choices"][0]["text"]
    return "done", text


def test_a_failing_step_over_http_fails_only_its_request():
    engine = tiny_async_engine(kv_cache_memory_bytes=64 << 20)   # not from free memory
    inner = engine.engine.runner
    engine.engine.runner = FaultyRunner(inner)
    srv = serve_in_thread(engine)
    bodies = [{"model": "tiny", "prompt": p, "max_tokens": 12, "ignore_eos": True,
               "temperature": 0.8, "seed": 100 + i, "stream": True}
              for i, p in enumerate(PROMPTS)]
    bad = dict(bodies[0], prompt="poison", seed=POISON_SEED)

    async def main():
        async with httpx.AsyncClient(timeout=120) as client:
            good = [asyncio.ensure_future(_stream(client, srv.url, b)) for b in bodies]
            await asyncio.sleep(0.05)
            worse = await _stream(client, srv.url, bad)
            plain = await client.post(srv.url + "/v1/completions",
                                      json=dict(bad, stream=False))
            return await asyncio.gather(*good), worse, plain

    try:
        good, worse, plain = asyncio.run(main())
        assert worse[0] == "error" and "engine step failed on this request" in worse[1]
        assert plain.status_code == 500 and "InjectedStepFault" in plain.json()["error"][
            "message"]
        # The stream's fault hit a step it shared with the good streams.
        assert max(engine.engine.runner.fault_batch_sizes) > 1
        # The oracle: the offline API on an engine that never saw the bad request.
        from engine_utils import engine as offline_engine
        from engine_utils import generate
        eng = offline_engine(max_num_seqs=32, max_model_len=256, max_num_batched_tokens=256,
                             kv_cache_memory_bytes=64 << 20)
        tok = engine.tokenizer
        want = generate(eng, [tok.encode(p) for p in PROMPTS],
                        [SamplingParams(max_tokens=12, ignore_eos=True, temperature=0.8,
                                        seed=100 + i) for i in range(len(PROMPTS))])
        assert good == [("done", o.text) for o in want]
        st = wait_idle(engine)
        assert st["num_running"] == st["num_waiting"] == st["kv_blocks_used"] == 0
        assert st["num_failed"] == 2
        engine.engine.scheduler.block_manager.check_all_free()
        assert not engine.engine.errors
    finally:
        srv.stop()
