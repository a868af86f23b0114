"""The runner's sampler variants: a larger candidate cap is compiled only when a request's
top_k needs it, and a request's tokens do not change with the variant its batch ran in."""
import numpy as np

from engine_utils import engine, generate, reference_logprobs
from llmserve.model.sampling import CANDIDATE_CAPS
from llmserve.sampling_params import SamplingParams

KW = dict(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=128)


def prompts_of(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, 256, n)] for n in lengths]


def test_large_top_k_compiles_a_wider_cap_and_keeps_each_requests_tokens():
    prompts = prompts_of([9, 14, 21])
    small = SamplingParams(max_tokens=6, temperature=1.0, top_k=20, top_p=0.9, seed=5,
                           ignore_eos=True)
    wide = SamplingParams(max_tokens=6, temperature=1.0, top_k=200, seed=6, ignore_eos=True)
    eng = engine(**KW)
    alone = generate(eng, prompts[:2], small)
    assert all(len(s) == 4 for s in eng.runner.stats.compiled_shapes)
    # The same two requests next to a top_k=200 one: the batch runs the cap-256 variant.
    mixed = generate(eng, prompts, [small, small, wide])
    caps = {s[-1] for s in eng.runner.stats.compiled_shapes if len(s) > 4}
    assert caps == {("cap", next(c for c in CANDIDATE_CAPS if c >= 200))}
    assert [o.token_ids for o in mixed[:2]] == [o.token_ids for o in alone]
    # Each token of the top_k=200 request is among the 200 most likely under an independent
    # dense forward of the whole sequence.
    seq = prompts[2] + mixed[2].token_ids
    ref = reference_logprobs(seq)
    for j, tok in enumerate(mixed[2].token_ids):
        row = ref[len(prompts[2]) - 1 + j]
        assert (row > row[tok]).sum() < 200
