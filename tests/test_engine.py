"""The engine end to end with the tiny dummy model: invariance, compilation, bad input."""
import numpy as np
import pytest

from engine_utils import engine, generate, tiny_model
from llmserve.sampling_params import SamplingParams

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)


def prompts_of(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, 256, n)] for n in lengths]


def test_batch_invariance_32_prompts_chunked():
    prompts = prompts_of(list(range(1, 301, 10))[:30] + [299, 300])
    assert len(prompts) == 32
    kw = dict(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=512)
    together = generate(engine(**kw), prompts, GREEDY)
    eng = engine(**kw)
    for p, out in zip(prompts, together):
        alone = generate(eng, [p], GREEDY)[0]
        assert alone.token_ids == out.token_ids
    eng.scheduler.block_manager.check_all_free()


def test_policies_and_preemption_give_identical_greedy_tokens():
    prompts = prompts_of([5, 40, 77, 120, 3, 64])
    ref = [o.token_ids for o in generate(engine(max_model_len=256), prompts, GREEDY)]
    cont = generate(engine(policy="continuous", max_num_batched_tokens=256, max_model_len=256),
                    prompts, GREEDY)
    assert [o.token_ids for o in cont] == ref
    # A pool far too small for the batch forces recompute preemption.
    small = engine(max_model_len=256, num_kv_blocks=12, max_num_batched_tokens=32)
    outs = generate(small, prompts, GREEDY)
    assert small.scheduler.stats.num_preemptions > 0
    assert [o.token_ids for o in outs] == ref
    small.scheduler.block_manager.check_all_free()


def test_compilation_is_bounded_by_warmup():
    from llmserve.runner.jax_runner import JaxRunner
    eng = engine(max_num_seqs=16, max_num_batched_tokens=64, max_model_len=256)
    n_shapes = eng.runner.warmup()
    assert n_shapes == len(eng.runner.buckets.all_shapes())
    before = JaxRunner.jit_cache_size()
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 200, 200)
    sps = [SamplingParams(max_tokens=int(rng.integers(1, 50)), temperature=0.0, ignore_eos=True)
           for _ in lengths]
    outs = generate(eng, prompts_of(lengths, 2), sps)
    assert all(o.finished for o in outs)
    assert JaxRunner.jit_cache_size() == before, "a shape outside the warm-up was compiled"
    assert eng.runner.stats.num_compiles == n_shapes


def test_sampling_is_reproducible_and_logprobs_are_returned():
    prompts = prompts_of([10, 20, 30])
    sp = SamplingParams(max_tokens=8, temperature=0.8, top_p=0.9, top_k=50, seed=123,
                        ignore_eos=True, logprobs=True)
    a = generate(engine(), prompts, sp)
    b = generate(engine(max_num_batched_tokens=16), prompts[::-1], sp)[::-1]
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    for o in a:
        assert len(o.logprobs) == 8 and all(lp <= 0 for lp in o.logprobs)
    # top_k=1 is greedy whatever the temperature.
    g = generate(engine(), prompts, GREEDY)
    k1 = generate(engine(), prompts, SamplingParams(max_tokens=6, temperature=2.0, top_k=1,
                                                    ignore_eos=True))
    assert [o.token_ids for o in g] == [o.token_ids for o in k1]


def test_stop_token_and_eos_and_metrics():
    prompts = prompts_of([12])
    free = generate(engine(), prompts, SamplingParams(max_tokens=6, temperature=0.0,
                                                      ignore_eos=True))[0]
    stop_at = free.token_ids[2]
    out = generate(engine(), prompts, SamplingParams(max_tokens=6, temperature=0.0,
                                                     stop_token_ids=[stop_at]))[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == free.token_ids[:free.token_ids.index(stop_at) + 1]
    assert free.finish_reason == "length"
    m = free.metrics
    assert m.ttft > 0 and m.e2e >= m.ttft and m.tpot > 0 and m.num_output_tokens == 6


BAD = [
    ("", GREEDY, "prompt is empty"),
    ([], GREEDY, "prompt is empty"),
    ([1, 2, 9999], GREEDY, "prompt token 2 is 9999, outside the vocabulary"),
    ([1, -1], GREEDY, "prompt token 1 is -1"),
    ([1] * 250, SamplingParams(max_tokens=10), "exceeds max_model_len"),
    ([1, "a"], GREEDY, "prompt token 1 must be an int"),
    (np.array([1, 2, 9999]), GREEDY, "prompt token 2 is 9999, outside the vocabulary"),
    (np.array([], np.int64), GREEDY, "prompt is empty"),
    (np.array([1.0, 2.0]), GREEDY, "1-D integer numpy array"),
]


def test_numpy_prompt_generates_as_the_same_list():
    ids = [5, 17, 3, 42, 8]
    ref = generate(engine(), [ids], GREEDY)[0]
    out = generate(engine(), [np.array(ids, np.int32)], GREEDY)[0]
    assert out.token_ids == ref.token_ids and out.prompt_token_ids == ids


@pytest.mark.parametrize("prompt,sp,match", BAD)
def test_bad_requests_raise_and_leak_nothing(prompt, sp, match):
    eng = engine(max_model_len=256)
    good = prompts_of([7, 30])
    ref = generate(engine(max_model_len=256), good, GREEDY)
    eng.add_request(good[0], GREEDY)
    with pytest.raises(ValueError, match=match):
        eng.add_request(prompt, sp)
    eng.add_request(good[1], GREEDY)
    outs = []
    while eng.has_unfinished():
        outs += [o for o in eng.step() if o.finished]
    assert sorted(o.token_ids for o in outs) == sorted(o.token_ids for o in ref)
    eng.scheduler.block_manager.check_all_free()


@pytest.mark.parametrize("kw,match", [
    (dict(max_tokens=0), r"max_tokens must be an int in \[1, 2\*\*31\)"),
    (dict(temperature=-0.1), "temperature must be a finite float >= 0"),
    (dict(top_p=0.0), r"top_p must be a float in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be a float in \(0, 1\]"),
    (dict(top_k=-2), r"top_k must be an int in \[-1, 2\*\*31\)"),
    (dict(stop_token_ids=5), "stop_token_ids must be a sequence of token ids .*, got 5"),
    (dict(logprobs=-1), "logprobs must be a bool, got -1"),
    (dict(ignore_eos="yes"), "ignore_eos must be a bool, got 'yes'"),
    # The types the step packs them into (issue 18): int32 counts, finite float32.
    (dict(top_k=2**31), r"top_k must be an int in \[-1, 2\*\*31\)"),
    (dict(max_tokens=2**31), "max_tokens must be an int in"),
    (dict(temperature=float("inf")), "temperature must be a finite float"),
    (dict(temperature=1e39), "temperature must be a finite float"),
    (dict(top_p=float("nan")), "top_p must be a float"),
    (dict(stop_token_ids=[1, 2**31]), r"stop_token_ids\[1\] must be a token id"),
    (dict(seed=True), "seed must be None or an int"),
    (dict(temperature=True), "temperature must be a finite float"),
    (dict(top_k=10**5000), "top_k must be .*, got an int of about 5000 digits"),
])
def test_bad_sampling_params(kw, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kw)


def test_llm_generate_validates_all_prompts_first():
    from llmserve import LLM
    llm = LLM("tiny", max_model_len=128, max_num_batched_tokens=128)
    with pytest.raises(ValueError, match="prompt 1: prompt is empty"):
        llm.generate(["hello", ""], GREEDY)
    assert not llm.engine.has_unfinished()
    llm.engine.scheduler.block_manager.check_all_free()
    outs = llm.generate(["hello", "a longer prompt"], GREEDY)
    assert [len(o.token_ids) for o in outs] == [6, 6] and isinstance(outs[0].text, str)


def test_llm_rejects_unknown_arguments_and_config_fields():
    from llmserve import LLM, EngineConfig
    with pytest.raises(ValueError, match="unknown LLM argument"):
        LLM("tiny", max_seqs=4)
    with pytest.raises(ValueError, match=r"unknown engine config field\(s\) \['polcy'\]"):
        EngineConfig.from_dict({"polcy": "chunked"})
    with pytest.raises(ValueError, match="'max_num_seqs' must be int"):
        EngineConfig(max_num_seqs="8")
    with pytest.raises(ValueError, match="unknown model preset"):
        LLM("no-such-model")


def test_config_file_builds_engine_config():
    from llmserve.config import EngineConfig, load_config
    cd = load_config("configs/engine.py", {"max_num_seqs": 8})
    cfg = EngineConfig.from_dict(cd)
    assert cfg.max_num_seqs == 8 and cfg.model == "tiny"
    with pytest.raises(ValueError, match="unknown config field 'nope'"):
        load_config("configs/engine.py", {"nope": 1})


def test_tiny_preset_size():
    cfg, params, _ = tiny_model()
    import jax
    n = sum(x.size for x in jax.tree.leaves(params))
    assert n == cfg.num_params() and 15e6 < n < 25e6
