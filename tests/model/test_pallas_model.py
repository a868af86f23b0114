"""The whole model gives the same greedy tokens with the Pallas kernel (interpret) as with
the plain-jnp reference, through the engine (mixed prefill chunks + decodes)."""
import numpy as np

from engine_utils import engine, generate
from llmserve.sampling_params import SamplingParams


def test_pallas_interpret_matches_reference_greedy():
    rng = np.random.default_rng(3)
    prompts = [[int(t) for t in rng.integers(0, 256, n)] for n in (1, 15, 16, 17, 70)]
    sp = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    kw = dict(max_num_seqs=4, max_num_batched_tokens=32, max_model_len=128, num_kv_blocks=48)
    ref = generate(engine(attention_impl="reference", **kw), prompts, sp)
    pal = generate(engine(attention_impl="pallas_interpret", **kw), prompts, sp)
    assert [o.token_ids for o in pal] == [o.token_ids for o in ref]
