"""Prompt logprobs (SamplingParams.prompt_logprobs) end to end on the tiny model, checked
against an independent forward (engine_utils.reference_logprobs: the whole prompt in one dense
prefill, log_softmax in numpy), under chunked prefill, prefix caching and preemption."""
import numpy as np
import pytest

from engine_utils import engine, generate, reference_logprobs, tiny_model
from llmserve.config import EngineConfig
from llmserve.engine import LLMEngine
from llmserve.runner.mock_runner import MockRunner, mock_prompt_logprob
from llmserve.sampling_params import SamplingParams

KW = dict(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=160)


def prompts_of(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, 256, n)] for n in lengths]


def sp(k, max_tokens=4, **kw):
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True,
                          prompt_logprobs=k, **kw)


def check_against_oracle(prompt, got, k):
    """got: RequestOutput.prompt_logprobs of `prompt` asked with prompt_logprobs=k."""
    ref = reference_logprobs(prompt)
    assert len(got) == len(prompt) and got[0] is None
    for j in range(1, len(prompt)):
        entry = got[j]
        assert entry is not None, f"prompt position {j} missing"
        assert len(entry) == 1 + k
        tok, lp = entry[0]
        assert tok == prompt[j]
        assert lp == pytest.approx(ref[j - 1, prompt[j]], abs=1e-4), f"position {j}"
        if k:
            ids = [t for t, _ in entry[1:]]
            lps = np.array([v for _, v in entry[1:]])
            np.testing.assert_allclose(lps, np.sort(ref[j - 1])[::-1][:k], atol=1e-4)
            np.testing.assert_allclose(lps, ref[j - 1, ids], atol=1e-4)


def test_sampling_params_prompt_logprobs_validated():
    assert SamplingParams().prompt_logprobs is None
    assert SamplingParams(prompt_logprobs=0, max_tokens=0).max_tokens == 0
    for bad in (-1, 21, True, 1.0, "3"):
        with pytest.raises(ValueError, match="prompt_logprobs"):
            SamplingParams(prompt_logprobs=bad)
    with pytest.raises(ValueError, match="max_tokens.*0 only with prompt_logprobs"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=-1, prompt_logprobs=0)


def test_prompt_logprobs_match_an_independent_forward_and_change_nothing_else():
    prompts = prompts_of([9, 33, 2, 20], seed=3)
    ks = [0, 5, 20, None]
    plain = generate(engine(**KW), prompts,
                     [SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True,
                                     logprobs=True)] * 4)
    eng = engine(**KW)
    outs = generate(eng, prompts, [sp(k, max_tokens=5, logprobs=True) for k in ks])
    for p, k, o, a in zip(prompts, ks, outs, plain):
        if k is None:
            assert o.prompt_logprobs is None
        else:
            check_against_oracle(p, o.prompt_logprobs, k)
        # Sampling reads its rows from the all-rows logits: same tokens, same logprobs.
        assert o.token_ids == a.token_ids
        np.testing.assert_allclose(o.logprobs, a.logprobs, atol=1e-5)
    tags = {s[4:] for s in eng.runner.stats.compiled_shapes if len(s) > 4}
    assert ("prompt", "prompt_top") in tags
    eng.scheduler.block_manager.check_all_free()


def test_no_prompt_logprobs_step_variant_unless_a_prompt_row_needs_it():
    eng = engine(**KW)
    generate(eng, prompts_of([10, 30]), SamplingParams(max_tokens=3, ignore_eos=True))
    assert all(len(s) == 4 for s in eng.runner.stats.compiled_shapes)
    # A one-token prompt has no prompt token to score: nothing to compute, default step.
    o = generate(eng, [[7]], sp(3))[0]
    assert o.prompt_logprobs == [None]
    assert all(len(s) == 4 for s in eng.runner.stats.compiled_shapes)
    # k = 0 alone compiles the cheaper variant (no top-k over the rows).
    generate(eng, prompts_of([12]), sp(0))
    assert {s[4:] for s in eng.runner.stats.compiled_shapes if len(s) > 4} == {
        ("prompt", "prompt_chosen")}


def test_chunked_prefill_collects_every_position_once_in_order():
    # Budget 16 per step, prompts of 50 and 37 tokens: several chunks each, and a chunk
    # boundary's target is the next chunk's first token.
    prompts = prompts_of([50, 37], seed=5)
    eng = engine(max_num_seqs=4, max_num_batched_tokens=16, max_model_len=96)
    outs = generate(eng, prompts, [sp(2), sp(0)])
    prompt_steps = [s for s in eng.runner.stats.compiled_shapes if "prompt" in s]
    assert prompt_steps
    assert eng.scheduler.stats.num_steps >= (50 + 37) // 16
    for p, k, o in zip(prompts, (2, 0), outs):
        check_against_oracle(p, o.prompt_logprobs, k)


def test_prefix_caching_no_hits_for_prompt_logprobs_but_it_fills_the_cache():
    rng = np.random.default_rng(11)
    prefix = [int(t) for t in rng.integers(0, 256, 48)]
    a, b, c = (prefix + [int(t) for t in rng.integers(0, 256, n)] for n in (5, 9, 7))
    eng = engine(enable_prefix_caching=True, **KW)
    st = eng.scheduler.stats
    generate(eng, [a], SamplingParams(max_tokens=2, ignore_eos=True))    # fills the cache
    hits = st.num_cache_hit_tokens
    ob = generate(eng, [b], sp(3))[0]
    assert st.num_cache_hit_tokens == hits, "a prompt_logprobs request took cache hits"
    check_against_oracle(b, ob.prompt_logprobs, 3)
    # Its own blocks went into the cache: a later request sharing its prefix hits them.
    eng2 = engine(enable_prefix_caching=True, **KW)
    ob2 = generate(eng2, [b], sp(0))[0]
    generate(eng2, [c], SamplingParams(max_tokens=2, ignore_eos=True))
    assert eng2.scheduler.stats.num_cache_hit_tokens >= 48 // 16 * 16
    check_against_oracle(b, ob2.prompt_logprobs, 0)


def test_preemption_recompute_keeps_one_value_per_position():
    prompts = prompts_of([40, 60, 25, 70], seed=7)
    eng = engine(max_num_seqs=4, max_num_batched_tokens=32, max_model_len=160,
                 num_kv_blocks=14)
    outs = generate(eng, prompts, [sp(k, max_tokens=40) for k in (0, 4, 0, 1)])
    assert any(o.metrics.num_preemptions for o in outs), "the pool did not force preemption"
    for p, k, o in zip(prompts, (0, 4, 0, 1), outs):
        check_against_oracle(p, o.prompt_logprobs, k)
    eng.scheduler.block_manager.check_all_free()


@pytest.mark.parametrize("chunk", [16, 64])
def test_max_tokens_zero_ends_after_the_prefill(chunk):
    prompts = prompts_of([45, 8], seed=9)
    eng = engine(max_num_seqs=4, max_num_batched_tokens=chunk, max_model_len=96)
    outs = generate(eng, prompts, [sp(1, max_tokens=0, logprobs=True), sp(0, max_tokens=3)])
    o = outs[0]
    assert (o.finished, o.finish_reason, o.token_ids, o.logprobs) == (True, "length", [], [])
    assert o.text == "" and o.metrics.num_output_tokens == 0
    check_against_oracle(prompts[0], o.prompt_logprobs, 1)
    assert len(outs[1].token_ids) == 3
    check_against_oracle(prompts[1], outs[1].prompt_logprobs, 0)
    eng.scheduler.block_manager.check_all_free()
    assert eng.scheduler.block_manager.num_used_blocks == 0


@pytest.mark.parametrize("policy", ["static", "continuous"])
def test_whole_prompt_policies(policy):
    # Static batching pads the shorter prompt (dummy rows after its real ones; a finished
    # member keeps a padding row): only real prompt rows are scored.
    prompts = prompts_of([30, 11, 19], seed=4)
    eng = engine(max_num_seqs=4, max_num_batched_tokens=128, max_model_len=96, policy=policy)
    outs = generate(eng, prompts, [sp(0, max_tokens=0), sp(3, max_tokens=6), sp(None, 2)])
    assert outs[0].token_ids == [] and len(outs[1].token_ids) == 6
    check_against_oracle(prompts[0], outs[0].prompt_logprobs, 0)
    check_against_oracle(prompts[1], outs[1].prompt_logprobs, 3)
    assert outs[2].prompt_logprobs is None
    eng.scheduler.block_manager.check_all_free()


def test_mock_runner_positions_under_chunking_and_preemption():
    """Scheduler bookkeeping alone (no model): the mock value of each position lands on it."""
    from llmserve.model.config import get_preset
    from llmserve.tokenizer import ByteTokenizer
    cfg = EngineConfig(max_model_len=128, max_num_batched_tokens=16, num_kv_blocks=8,
                       max_num_seqs=4, block_size=16)
    eng = LLMEngine(cfg, runner=MockRunner(256),
                    model=(get_preset("tiny"), None, ByteTokenizer()))
    prompts = prompts_of([50, 30, 45], seed=2)
    outs = generate(eng, prompts, [sp(2, max_tokens=40), sp(0, max_tokens=40),
                                   sp(0, max_tokens=0)])
    assert eng.scheduler.stats.num_preemptions > 0
    for p, o in zip(prompts, outs):
        assert o.prompt_logprobs[0] is None
        assert [e[0] for e in o.prompt_logprobs[1:]] == [
            (p[j], mock_prompt_logprob(j - 1)) for j in range(1, len(p))]
    assert [len(e) for e in outs[0].prompt_logprobs[1:]] == [3] * 49
    assert outs[2].token_ids == [] and outs[2].finish_reason == "length"
    eng.scheduler.block_manager.check_all_free()


def test_tiny_model_fixture_is_shared():
    # The oracle and the engine use the same weights (engine_utils.tiny_model is cached).
    assert engine(**KW).model_config == tiny_model()[0]
