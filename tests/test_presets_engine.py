"""The four presets on the real tiny model: greedy outputs never depend on the policy, on
prefix caching or on preemption; static batching's padding is really computed."""
import numpy as np
import pytest
from engine_utils import engine, generate

from llmserve.sampling_params import SamplingParams

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
MAX_LEN = 128


def shared_prefix_prompts():
    rng = np.random.default_rng(3)
    system = [int(t) for t in rng.integers(0, 256, 40)]      # 2.5 blocks of 16
    tails = [5, 17, 1, 30, 9, 22]
    return [system + [int(t) for t in rng.integers(0, 256, n)] for n in tails]


@pytest.fixture(scope="module")
def reference():
    prompts = shared_prefix_prompts()
    outs = generate(engine(max_model_len=MAX_LEN), prompts, GREEDY)
    return prompts, [o.token_ids for o in outs]


@pytest.mark.parametrize("preset", ["static", "continuous", "chunked", "predictive"])
@pytest.mark.parametrize("caching", [False, True])
def test_presets_give_identical_greedy_tokens(reference, preset, caching):
    prompts, ref = reference
    budget = MAX_LEN if preset in ("static", "continuous") else 32
    eng = engine(policy=preset, max_model_len=MAX_LEN, max_num_batched_tokens=budget,
                 max_num_seqs=4, enable_prefix_caching=caching, static_batch_size=4)
    outs = generate(eng, prompts, GREEDY)
    assert [o.token_ids for o in outs] == ref
    sched = eng.scheduler
    sched.block_manager.check_all_free()
    if caching:
        assert sched.block_manager.num_hit_tokens >= 32 * (len(prompts) - 4)
    if preset == "static":
        assert sched.stats.num_padding_tokens > 0
        # The runner computed exactly the padding the scheduler charged.
        assert eng.runner.stats.scheduling_padding_tokens == sched.stats.num_padding_tokens
    else:
        assert sched.stats.num_padding_tokens == 0


@pytest.mark.parametrize("preset", ["continuous", "chunked", "predictive"])
def test_forced_preemption_keeps_greedy_tokens(preset):
    rng = np.random.default_rng(5)
    prompts = [[int(t) for t in rng.integers(0, 256, n)] for n in (12, 15, 10, 14, 11)]
    sp = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)
    ref = [o.token_ids for o in generate(engine(max_model_len=MAX_LEN), prompts, sp)]
    budget = MAX_LEN if preset == "continuous" else 32
    # Each request grows from 1 block to 3 (16-token blocks); 6 blocks cannot hold 4 of them.
    eng = engine(policy=preset, max_model_len=MAX_LEN, max_num_batched_tokens=budget,
                 max_num_seqs=4, num_kv_blocks=6)
    outs = generate(eng, prompts, sp)
    assert eng.scheduler.stats.num_preemptions > 0
    assert [o.token_ids for o in outs] == ref
    eng.scheduler.block_manager.check_all_free()
