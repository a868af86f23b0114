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
