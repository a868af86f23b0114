"""AsyncLLMEngine on a mock runner (no model): outputs equal the synchronous engine's, input
errors are raised before anything is yielded, aborts free blocks, history stays bounded."""
import asyncio
import time

import pytest

from llmserve.config import EngineConfig
from llmserve.engine import LLMEngine
from llmserve.model.config import get_preset
from llmserve.runner.mock_runner import MockRunner
from llmserve.sampling_params import SamplingParams
from llmserve.server.async_engine import AsyncLLMEngine, QueueFullError
from llmserve.tokenizer import ByteTokenizer


class SlowMockRunner(MockRunner):
    def execute(self, sched_out):
        time.sleep(0.002)
        return super().execute(sched_out)


def _engine(slow=False, **kw):
    cfg = dict(max_num_seqs=4, max_model_len=128, num_kv_blocks=64)
    cfg.update(kw)
    return LLMEngine(EngineConfig(**cfg), runner=(SlowMockRunner if slow else MockRunner)(256),
                     model=(get_preset("tiny"), None, ByteTokenizer()))


def _collect(ae, prompt, sp, rid, **kw):
    async def go():
        outs = []
        async for o in ae.generate(prompt, sp, rid, **kw):
            outs.append(o)
        return outs
    return go()


def test_outputs_match_the_synchronous_engine_and_errors_come_first():
    sp = SamplingParams(max_tokens=20, ignore_eos=True)
    sync = _engine()
    ids = [sync.add_request(p, sp, f"r{i}") for i, p in enumerate(["ab", "cde", "f" * 30])]
    want = {}
    while sync.has_unfinished():
        for o in sync.step():
            if o.finished:
                want[o.request_id] = o.token_ids
    ae = AsyncLLMEngine(_engine(), "mock")

    async def main():
        await ae.start()
        res = await asyncio.gather(*(_collect(ae, p, sp, f"r{i}")
                                     for i, p in enumerate(["ab", "cde", "f" * 30])))
        with pytest.raises(ValueError, match="top_p"):
            SamplingParams(top_p=2)
        with pytest.raises(ValueError, match="exceeds max_model_len"):
            await _collect(ae, "x" * 120, sp, "too-long")
        with pytest.raises(ValueError, match="stop"):
            await _collect(ae, "x", sp, "bad-stop", stop=[""])
        await ae.shutdown(1.0)
        return res
    res = asyncio.run(main())
    for rid, outs in zip(ids, res):
        assert outs[-1].finished and outs[-1].token_ids == want[rid]
        # cumulative snapshots: each extends the previous one
        for a, b in zip(outs, outs[1:]):
            assert b.token_ids[:len(a.token_ids)] == a.token_ids
        assert outs[-1].text == ByteTokenizer().decode(want[rid])


def test_abort_frees_blocks_queue_bound_and_bounded_history():
    ae = AsyncLLMEngine(_engine(slow=True, max_num_seqs=1, max_model_len=512), "mock",
                        max_waiting_requests=1)
    ae.history_steps = 50
    sp = SamplingParams(max_tokens=400, ignore_eos=True)

    async def main():
        await ae.start()
        long_run = ae.generate("a", sp, "long")
        first = await long_run.__anext__()           # running
        waiting = asyncio.ensure_future(_collect(ae, "b", SamplingParams(max_tokens=300,
                                                                         ignore_eos=True), "w"))
        for _ in range(2000):
            if ae.stats()["num_waiting"] >= 1:
                break
            await asyncio.sleep(0.001)
        with pytest.raises(QueueFullError):
            await _collect(ae, "c", sp, "refused")
        await long_run.aclose()                      # the client went away
        outs = await asyncio.wait_for(waiting, 30)
        await ae.shutdown(1.0)
        return first, outs
    first, outs = asyncio.run(main())
    assert not first.finished and len(outs[-1].token_ids) == 300
    st = ae.stats()
    assert st["num_aborted"] == 1 and st["kv_blocks_used"] == 0
    ae.engine.scheduler.block_manager.check_all_free()
    assert len(ae.engine.step_times) <= 100 and len(ae.engine.scheduler.step_records) <= 100


def test_snapshot_queued_before_an_error_is_delivered_first():
    """A snapshot and an error that reach the stream together: the tokens come out, then the
    error (coalescing the queue used to drop the snapshot)."""
    from types import SimpleNamespace

    from llmserve.server.async_engine import RequestFailedError
    ae = AsyncLLMEngine(_engine(), "mock")
    ae._thread = object()                 # no engine thread: the test feeds the stream
    snap = SimpleNamespace(finished=False, token_ids=[5, 6])

    def submit(cmd):
        if cmd[0] == "add":
            stream = cmd[4]
            stream.queue.put_nowait(SimpleNamespace(finished=False, token_ids=[5]))
            stream.queue.put_nowait(snap)
            stream.queue.put_nowait(RequestFailedError("engine step failed"))
    ae._submit = submit

    async def main():
        got = []
        with pytest.raises(RequestFailedError):
            async for o in ae.generate("ab", SamplingParams(max_tokens=4), "r"):
                got.append(o)
        return got
    assert asyncio.run(main()) == [snap]


def test_streamed_text_keeps_the_space_after_the_prompt():
    # The llama fixture's SentencePiece tokenizer drops the leading space of whatever it
    # decodes first; the tracker decodes the output after the prompt's tail instead, so the
    # streamed text continues the prompt as the whole sequence's text does.
    import os

    from llmserve.server.async_engine import TextTracker
    from llmserve.tokenizer import HFTokenizer
    tok = HFTokenizer(os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf", "llama"))
    prompt = tok.encode("Hello")
    cont = tok.encode("Hello world")[len(prompt):]
    tr = TextTracker(tok, (), prompt)
    assert not tr.update(cont[:2], False) and tr.text == " wor"
    assert not tr.update(cont, True) and tr.text == " world"
    tr = TextTracker(tok, ("ld",), prompt)
    assert tr.update(cont, True) and tr.text == " wor"


def test_logprob_token_texts_keep_their_spaces():
    # Per-token texts of completions/chat logprobs: with a SentencePiece tokenizer each
    # piece decoded alone loses its leading space, so the tokens did not add up to the text
    # and text_offset drifted. Each is now what it adds after the tokens before it.
    import os

    from llmserve.server import protocol as P
    from llmserve.tokenizer import HFTokenizer
    tok = HFTokenizer(os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf", "llama"))
    prompt = tok.encode("Hello")
    cont = tok.encode("Hello world")[len(prompt):]
    lp = P.completion_logprobs(tok, cont, [-1.0] * len(cont), 5,
                               [[(t, -1.0)] for t in cont], context=prompt)
    assert "".join(lp["tokens"]) == " world"
    assert lp["text_offset"][0] == 5 and lp["top_logprobs"][0] == {lp["tokens"][0]: -1.0}
    whole = tok.encode("Hello  world, the cat")
    echo = P.echo_logprobs(tok, whole, None, False)
    assert "".join(echo["tokens"]) == "Hello  world, the cat"
    text = "".join(echo["tokens"])
    assert all(text[o:o + len(t)] == t for o, t in zip(echo["text_offset"], echo["tokens"]))
    chat = P.chat_logprobs(tok, cont, [-1.0] * len(cont), context=prompt)["content"]
    assert "".join(e["token"] for e in chat) == " world"
    assert chat[0]["bytes"] == list(chat[0]["token"].encode())
