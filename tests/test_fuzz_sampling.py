"""Issue 18: SamplingParams and LLM.generate fuzzed (hypothesis, a fixed number of examples,
derandomized so CI runs the same ones). Properties: a value is either refused with a
ValueError naming its field, or it fits the type the step packs it into (checked with numpy,
not with our own code) and a generation with it finishes; nothing stays in the engine."""
import collections
import math
import re

import numpy as np
import pytest
from fuzz_strategies import (BOUNDARY_INTS, HOSTILE_FLOATS, WRONG_TYPES, prompts,
                             sampling_kwargs)
from hypothesis import HealthCheck, given, settings

from llmserve.sampling_params import SamplingParams

TALLY: collections.Counter = collections.Counter()   # (test, outcome): the RESULTS table
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _fits_the_step(sp: SamplingParams) -> bool:
    """What JaxRunner.prepare does with the values: int32 / uint32 / float32 slots."""
    i32 = np.iinfo(np.int32)
    ints = [sp.top_k, sp.max_tokens, sp.top_logprobs, *sp.stop_token_ids]
    if sp.prompt_logprobs is not None:
        ints.append(sp.prompt_logprobs)
    with np.errstate(over="raise"):
        floats = [np.float32(sp.temperature), np.float32(sp.top_p)]
    return (all(type(v) is int and i32.min <= v <= i32.max for v in ints)
            and all(math.isfinite(f) for f in floats)
            and (sp.seed is None or 0 <= sp.seed <= np.iinfo(np.uint32).max))


@FUZZ
@given(kw=sampling_kwargs())
def test_sampling_params_refuse_by_field_or_fit_the_step(kw):
    try:
        sp = SamplingParams(**kw)
    except ValueError as e:
        TALLY["SamplingParams", "refused"] += 1
        m = re.match(r"SamplingParams\.(\w+)", str(e))
        assert m and m.group(1) in kw, str(e)
        assert "set_int_max_str_digits" not in str(e)
        return
    TALLY["SamplingParams", "accepted"] += 1
    assert _fits_the_step(sp), sp


@pytest.fixture(scope="module")
def llm():
    from llmserve import LLM
    # A fixed KV pool, not one sized from the host's free memory (a shared machine's varies).
    yield LLM("tiny", max_model_len=64, max_num_batched_tokens=32, max_num_seqs=4,
              kv_cache_memory_bytes=64 << 20)
    print(f"\nSamplingParams/LLM.generate fuzz: {dict(TALLY)}")


FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop_token_ids",
          "ignore_eos", "logprobs", "top_logprobs", "prompt_logprobs")
GRID = [(f, v) for f in FIELDS for v in BOUNDARY_INTS + HOSTILE_FLOATS + WRONG_TYPES] + [
    ("stop_token_ids", [v]) for v in BOUNDARY_INTS + HOSTILE_FLOATS + WRONG_TYPES]


def test_every_field_at_every_boundary_refused_or_runs(llm):
    """The deterministic half of the campaign: each field alone at each boundary and hostile
    value (hypothesis seldom draws the overflow edges). Accepted values all run in one batch:
    a value that failed a step would show as an error on its request."""
    accepted = []
    for f, v in GRID:
        kw = {"max_tokens": 2, "ignore_eos": True, f: v}
        try:
            sp = SamplingParams(**kw)
        except ValueError as e:
            TALLY["grid", "refused"] += 1
            assert re.match(rf"SamplingParams\.{f}\b", str(e)), (f, v, str(e))
            continue
        assert _fits_the_step(sp), (f, v, sp)
        try:
            llm.engine.validate("x", sp)
        except ValueError as e:           # max_tokens beyond the 64-token context
            TALLY["grid", "refused"] += 1
            assert "max_model_len" in str(e), str(e)
            continue
        accepted.append(sp)
    TALLY["grid", "ran"] += len(accepted)
    outs = llm.generate(["x"] * len(accepted), accepted)
    assert [o.error for o in outs] == [None] * len(accepted)
    assert all(o.finished and o.token_ids for o in outs)


@settings(FUZZ, max_examples=40)
@given(prompt=prompts(), kw=sampling_kwargs())
def test_llm_generate_refuses_by_field_or_finishes(llm, prompt, kw):
    try:
        sp = SamplingParams(**kw)
    except ValueError:
        sp = SamplingParams()
    try:
        outs = llm.generate(prompt, sp)
    except ValueError as e:
        TALLY["LLM.generate", "refused"] += 1
        msg = str(e)
        assert re.match(r"(prompt \d+: )?(prompt|SamplingParams\.|got \d+ sampling_params)",
                        msg), msg
        assert "set_int_max_str_digits" not in msg
    else:
        n = 1 if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else \
            len(prompt)
        TALLY["LLM.generate", "generated"] += 1
        assert len(outs) == n and all(o.finished and o.error is None for o in outs)
        assert all(1 <= len(o.token_ids) + (o.finish_reason == "stop") <= sp.max_tokens + 1
                   for o in outs)
    eng = llm.engine
    assert not eng.has_unfinished() and not eng.errors
    eng.scheduler.block_manager.check_all_free()
