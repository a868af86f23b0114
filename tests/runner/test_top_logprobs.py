"""Top-N logprobs end to end on the tiny model, checked against an independent forward: the
whole sequence (prompt + generated tokens) in one dense prefill, log_softmax in numpy."""
import numpy as np
import pytest

from engine_utils import engine, generate, reference_logprobs
from llmserve.config import EngineConfig
from llmserve.engine import LLMEngine
from llmserve.runner.jax_runner import JaxRunner
from llmserve.runner.mock_runner import MockRunner
from llmserve.sampling_params import SamplingParams

KW = dict(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=128)


def prompts_of(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, 256, n)] for n in lengths]


def test_sampling_params_top_logprobs_validated_and_implies_logprobs():
    assert SamplingParams(top_logprobs=3).logprobs is True
    assert SamplingParams().top_logprobs == 0 and SamplingParams().logprobs is False
    for bad in (-1, 21, True, 2.0):
        with pytest.raises(ValueError, match="top_logprobs"):
            SamplingParams(top_logprobs=bad)


def test_greedy_top_logprobs_match_an_independent_forward():
    prompts = prompts_of([7, 30])
    ns = [5, 20]
    sps = [SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, top_logprobs=n)
           for n in ns]
    outs = generate(engine(**KW), prompts, sps)
    for p, n, o in zip(prompts, ns, outs):
        assert len(o.top_logprobs) == len(o.token_ids) == 6
        ref = reference_logprobs(p + o.token_ids)
        for j, (tok, lp, top) in enumerate(zip(o.token_ids, o.logprobs, o.top_logprobs)):
            assert len(top) == n
            ids = [t for t, _ in top]
            lps = np.array([v for _, v in top])
            assert np.all(np.diff(lps) <= 0), "not sorted by logprob"
            # Greedy: the most likely alternative is the chosen token, same logprob.
            assert ids[0] == tok and lps[0] == pytest.approx(lp, abs=1e-6)
            row = ref[len(p) - 1 + j]
            np.testing.assert_allclose(lps, np.sort(row)[::-1][:n], atol=1e-4)
            np.testing.assert_allclose(lps, row[ids], atol=1e-4)
            assert len(set(ids)) == n


def test_asking_changes_nothing_else_and_zero_keeps_the_default_step():
    prompts = prompts_of([5, 12, 40], seed=1)
    base = [SamplingParams(max_tokens=8, temperature=t, seed=7, ignore_eos=True, logprobs=True)
            for t in (0.0, 0.9, 1.3)]
    eng0 = engine(**KW)
    plain = generate(eng0, prompts, base)
    assert all(o.top_logprobs is None for o in plain)
    assert not any("top" in s for s in eng0.runner.stats.compiled_shapes)
    # Mixed batch: one request asks, the others do not.
    mixed_sps = [base[0], SamplingParams(**{**_fields(base[1]), "top_logprobs": 3}), base[2]]
    eng1 = engine(**KW)
    before = JaxRunner.jit_cache_size()
    mixed = generate(eng1, prompts, mixed_sps)
    grown = JaxRunner.jit_cache_size() - before
    for a, b in zip(plain, mixed):
        assert a.token_ids == b.token_ids
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-6)
    assert mixed[0].top_logprobs is None and mixed[2].top_logprobs is None
    for tok, lp, top in zip(mixed[1].token_ids, mixed[1].logprobs, mixed[1].top_logprobs):
        assert len(top) == 3 and top[0][1] >= lp - 1e-6
        if tok in dict(top):
            assert dict(top)[tok] == pytest.approx(lp, abs=1e-6)
    # At most one extra compiled variant per shape bucket, and only where a request asked:
    # eng0 compiled every default shape this run needs, so only top variants are new.
    tops = {s for s in eng1.runner.stats.compiled_shapes if "top" in s}
    assert tops and {s[:4] for s in tops} <= set(eng1.runner.buckets.all_shapes())
    assert grown <= len(tops)
    # Not asking again reuses the default executables: nothing compiles.
    before = JaxRunner.jit_cache_size()
    again = generate(eng1, prompts, base)
    assert JaxRunner.jit_cache_size() == before
    assert [o.token_ids for o in again] == [o.token_ids for o in plain]


def test_mock_runner_alternatives_start_with_the_chosen_token():
    from llmserve.model.config import get_preset
    from llmserve.tokenizer import ByteTokenizer
    eng = LLMEngine(EngineConfig(max_model_len=64), runner=MockRunner(256),
                    model=(get_preset("tiny"), None, ByteTokenizer()))
    o = generate(eng, [[1, 2, 3]], SamplingParams(max_tokens=4, ignore_eos=True,
                                                  top_logprobs=4))[0]
    assert [t[0][0] for t in o.top_logprobs] == o.token_ids
    assert all(len(t) == 4 and [v for _, v in t] == sorted([v for _, v in t], reverse=True)
               for t in o.top_logprobs)


def _fields(sp):
    import dataclasses
    return {f.name: getattr(sp, f.name) for f in dataclasses.fields(sp)}
