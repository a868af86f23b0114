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



def _tile_list_ops(num_layers: int) -> int:
    """Instructions of the ragged kernel's tile lists (jax.named_scope "ragged_tile_lists")
    in the compiled forward of a num_layers model, attention through the Pallas kernel."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from llmserve.model.attention import dense_metadata
    from llmserve.model.config import get_preset
    from llmserve.model.kv_cache import init_kv_cache
    from llmserve.model.params import init_params
    from llmserve.model.transformer import forward

    cfg = dataclasses.replace(get_preset("tiny"), num_layers=num_layers, hidden_size=128,
                              intermediate_size=256, num_heads=4, num_kv_heads=2)
    md = dense_metadata([20, 1, 1], block_size=16, num_blocks=16)   # a chunk + 2 decodes
    tokens = jnp.zeros((22,), jnp.int32)
    positions = jnp.concatenate([jnp.arange(20), jnp.zeros(2)]).astype(jnp.int32)

    def step(params, cache, md):
        return forward(params, cfg, tokens, positions, cache, md,
                       attention_impl="pallas_interpret")[0]

    text = jax.jit(step).lower(init_params(cfg), init_kv_cache(cfg, 16, 16), md).compile()
    return sum(1 for line in text.as_text().splitlines()
               if " = " in line and "ragged_tile_lists" in line)


def test_forward_computes_the_tile_lists_once_for_all_layers():
    """The layers of one step share its metadata, so XLA's CSE leaves one copy of the ragged
    kernel's tile lists in the compiled step, not one per layer: the GPU check's per-layer
    figure (pallas_kernels/benchmark.py, _ragged_layer_stack) rests on it."""
    one = _tile_list_ops(1)
    assert one > 0
    assert _tile_list_ops(3) == one
