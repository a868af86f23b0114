"""Shared helpers for engine tests: one tiny dummy model per process (weights drawn once)."""
import functools

from llmserve.config import EngineConfig
from llmserve.engine import LLMEngine
from llmserve.sampling_params import SamplingParams


@functools.cache
def tiny_model(seed=0):
    from llmserve.model.config import get_preset
    from llmserve.model.params import init_params
    from llmserve.tokenizer import load_tokenizer
    cfg = get_preset("tiny")
    return cfg, init_params(cfg, seed), load_tokenizer(None, cfg)


def engine(**kw):
    # A fixed 256 MiB pool (2,730 tiny blocks): the default is sized from the host's free
    # memory (up to 4 GiB), and a test process builds hundreds of engines.
    if not kw.get("num_kv_blocks"):
        kw.setdefault("kv_cache_memory_bytes", 256 << 20)
    return LLMEngine(EngineConfig(**kw), model=tiny_model())


def generate(eng, prompts, sps):
    if isinstance(sps, SamplingParams):
        sps = [sps] * len(prompts)
    ids = [eng.add_request(p, sp) for p, sp in zip(prompts, sps)]
    done = {}
    while eng.has_unfinished():
        for o in eng.step():
            if o.finished:
                done[o.request_id] = o
    return [done[i] for i in ids]


def reference_logprobs(seq: list[int]):
    """An independent forward: the whole sequence in one dense prefill of the tiny model,
    log_softmax in numpy (float64). Returns [len(seq), V]: row i is the distribution of the
    token after seq[i]."""
    import jax.numpy as jnp
    import numpy as np

    from llmserve.model.attention import dense_metadata
    from llmserve.model.kv_cache import init_kv_cache
    from llmserve.model.transformer import forward
    cfg, params, _ = tiny_model()
    bs, n = 16, len(seq)
    nblocks = -(-n // bs)
    md = dense_metadata([n], bs, nblocks + 1)
    logits, _ = forward(params, cfg, jnp.asarray(seq, jnp.int32),
                        jnp.arange(n, dtype=jnp.int32), init_kv_cache(cfg, nblocks + 1, bs), md)
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))
