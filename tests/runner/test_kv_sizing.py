"""Model-derived defaults: KV pool from memory, max_model_len from the model (vLLM's rules)."""
import os

import pytest

from llmserve import LLM
from llmserve.runner import kv_sizing

GIB = kv_sizing.GIB
FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf", "llama")


def _plan(**kw):
    args = dict(block_bytes=1024, block_size=16, max_num_seqs=4, max_num_batched_tokens=512,
                chunked_prefill=True, model_max_len=8192, budget_bytes=1000 * 1024,
                source="test")
    args.update(kw)
    return kv_sizing.plan_kv(**args)


def test_max_model_len_is_the_models_limit_when_the_pool_holds_it():
    p = _plan(budget_bytes=10_000 * 1024)        # 10,000 blocks = 160,000 tokens
    assert p.max_model_len == 8192
    # no more blocks than max_num_seqs full-length requests use
    assert p.num_blocks == 4 * 8192 // 16


def test_max_model_len_capped_by_what_the_pool_holds():
    p = _plan(budget_bytes=100 * 1024)           # 100 blocks = 1,600 tokens
    assert p.max_model_len == 1600 and p.num_blocks == 100


def test_unchunked_prompts_cap_the_length_at_the_token_budget():
    p = _plan(budget_bytes=10_000 * 1024, chunked_prefill=False)
    assert p.max_model_len == 512


def test_explicit_length_over_the_model_limit_names_the_knob():
    with pytest.raises(ValueError, match=r"max_model_len \(9000\).*max_position_embeddings"):
        _plan(max_model_len=9000)


def test_budget_from_memory_fraction_minus_use_and_reserve():
    b, src = kv_sizing.kv_budget(kv_cache_memory_bytes=0, memory_utilization=0.5,
                                 cpu_kv_cache_max_bytes=100 * GIB, reserve_bytes=GIB,
                                 measure=lambda: (80 * GIB, 10 * GIB, "gpu"))
    assert b == 40 * GIB - 10 * GIB - GIB and "memory_utilization 0.5" in src


def test_cpu_budget_has_a_cap_and_an_explicit_budget_wins():
    b, src = kv_sizing.kv_budget(kv_cache_memory_bytes=0, memory_utilization=0.9,
                                 cpu_kv_cache_max_bytes=4 * GIB, reserve_bytes=0,
                                 measure=lambda: (64 * GIB, GIB, "cpu"))
    assert b == 4 * GIB and "capped" in src
    # a busy host shrinks the pool instead of refusing to start
    b, _ = kv_sizing.kv_budget(kv_cache_memory_bytes=0, memory_utilization=0.9,
                               cpu_kv_cache_max_bytes=4 * GIB, reserve_bytes=0,
                               measure=lambda: (24 * GIB, 22 * GIB, "cpu"))
    assert b == int(2 * GIB * 0.9)
    b, src = kv_sizing.kv_budget(kv_cache_memory_bytes=123, memory_utilization=0.9,
                                 cpu_kv_cache_max_bytes=4 * GIB, reserve_bytes=0,
                                 measure=lambda: (64 * GIB, GIB, "cpu"))
    assert (b, src) == (123, "kv_cache_memory_bytes")


def test_no_memory_left_is_a_clear_error():
    with pytest.raises(ValueError, match="no memory left for a KV cache"):
        kv_sizing.kv_budget(kv_cache_memory_bytes=0, memory_utilization=0.5,
                            cpu_kv_cache_max_bytes=4 * GIB, reserve_bytes=0,
                            measure=lambda: (8 * GIB, 6 * GIB, "gpu"))


def test_checkpoint_with_a_short_context_loads_with_defaults():
    # Was: 'max_model_len (2048) exceeds the model's max_position_embeddings (512)', a value
    # the user never set. The fixture allows 512 positions.
    llm = LLM(FIXTURE)
    assert llm.engine.config.max_model_len == 512
    plan = llm.engine.kv_plan
    assert plan.num_blocks == llm.engine.scheduler.config.num_kv_blocks
    assert plan.num_blocks <= llm.engine.config.max_num_seqs * 512 // 16
