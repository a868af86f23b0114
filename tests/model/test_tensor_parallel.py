"""Tensor parallelism on 4 host-platform CPU devices: the same greedy tokens as the unsharded
model (tp=2 and tp=4, a GQA model), params and KV cache really split over the mesh, exactly
the two all-reduces per layer Megatron's scheme needs and no all-gather, and clear errors.

The device count has to be set in XLA_FLAGS before jax is first imported, so the checks run in
a subprocess (this file run as a script) and report JSON back to the test.
"""
import json
import os
import subprocess
import sys

import pytest

NUM_DEVICES = 4


def _check(mode: str = "reference") -> dict:
    import jax
    import numpy as np
    from jax.sharding import PartitionSpec as P

    from llmserve.config import EngineConfig
    from llmserve.engine import LLMEngine
    from llmserve.model.config import get_preset
    from llmserve.model.params import init_params
    from llmserve.sampling_params import SamplingParams
    from llmserve.tokenizer import load_tokenizer

    assert jax.device_count() == NUM_DEVICES, jax.devices()
    # GQA: 8 query heads over 4 kv heads, so tp=4 leaves one kv head (two q heads) per device.
    cfg = get_preset("tiny").replace(hidden_size=256, intermediate_size=512, num_layers=2,
                                     num_heads=8, num_kv_heads=4, head_dim=64)
    model = (cfg, init_params(cfg, 0), load_tokenizer(None, cfg))
    rng = np.random.default_rng(0)
    # Mixed lengths and a small token budget: chunked prefills, mixed and decode-only batches.
    prompts = [rng.integers(0, 256, n).tolist() for n in (5, 37, 70, 12)]
    sp = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, logprobs=True)

    def run(tp, impl="reference"):
        eng = LLMEngine(EngineConfig(tensor_parallel_size=tp, max_num_batched_tokens=64,
                                     max_num_seqs=4, max_model_len=256, num_kv_blocks=64,
                                     attention_impl=impl), model=model)
        ids = [eng.add_request(p, sp) for p in prompts]
        done = {}
        while eng.has_unfinished():
            for o in eng.step():
                if o.finished:
                    done[o.request_id] = o
        return eng, [done[i].token_ids for i in ids], [done[i].logprobs for i in ids]

    out = {}
    if mode == "pallas_interpret":
        # The Pallas kernels (interpreted on CPU) inside the per-device shard_map.
        prompts, sp = prompts[:3], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
        return {"ref": run(1)[1], "tp2": run(2, "pallas_interpret")[1]}
    _, ref_tokens, ref_lps = run(1)
    out["ref_tokens"] = ref_tokens
    for tp in (2, 4):
        eng, tokens, lps = run(tp)
        r = eng.runner
        wq, wo = r.params["layers"][0]["wq"], r.params["layers"][0]["wo"]
        k_pages = r.kv_cache[0][0]
        batch = r._empty_batch(64, 4, 16, 0)
        hlo = r._tp_steps[False].lower(r.params, r.kv_cache, batch).compile().as_text()
        out[f"tp{tp}"] = dict(
            tokens=tokens,
            max_logprob_diff=float(max(np.max(np.abs(np.subtract(a, b)))
                                       for a, b in zip(lps, ref_lps))),
            wq_spec=str(wq.sharding.spec), wq_spec_ok=wq.sharding.spec == P(None, "tp"),
            wq_shard=list(wq.addressable_shards[0].data.shape), wq_devices=len(wq.devices()),
            wo_spec_ok=wo.sharding.spec == P("tp", None),
            wo_shard=list(wo.addressable_shards[0].data.shape),
            kv_spec_ok=k_pages.sharding.spec == P("tp"),
            kv_shape=list(k_pages.shape),
            kv_shard=list(k_pages.addressable_shards[0].data.shape),
            kv_devices=len(k_pages.devices()),
            all_reduce=hlo.count(" all-reduce("), all_gather=hlo.count(" all-gather("))
    errors = {}
    for tp in (3, 8):
        try:
            run(tp)
        except ValueError as e:
            errors[tp] = str(e)
    out["errors"] = errors
    out["cfg"] = dict(q_size=cfg.q_size, hidden=cfg.hidden_size, layers=cfg.num_layers,
                      num_kv_heads=cfg.num_kv_heads)
    return out


def _run_check(mode: str) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={NUM_DEVICES}",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, __file__, mode], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def report():
    return _run_check("reference")


@pytest.mark.slow
def test_pallas_kernels_under_tp_same_tokens():
    r = _run_check("pallas_interpret")
    assert r["tp2"] == r["ref"]


@pytest.mark.parametrize("tp", [2, 4])
def test_same_greedy_tokens_as_unsharded(report, tp):
    r = report[f"tp{tp}"]
    assert r["tokens"] == report["ref_tokens"]
    # Only the all-reduce's summation order differs.
    assert r["max_logprob_diff"] < 1e-3


@pytest.mark.parametrize("tp", [2, 4])
def test_params_and_kv_cache_are_split(report, tp):
    r, c = report[f"tp{tp}"], report["cfg"]
    assert r["wq_spec_ok"] and r["wo_spec_ok"] and r["kv_spec_ok"], r
    assert r["wq_devices"] == r["kv_devices"] == tp
    assert r["wq_shard"] == [c["hidden"], c["q_size"] // tp]       # whole heads per device
    assert r["wo_shard"] == [c["q_size"] // tp, c["hidden"]]
    assert r["kv_shard"] == [c["num_kv_heads"] // tp] + r["kv_shape"][1:]


@pytest.mark.parametrize("tp", [2, 4])
def test_two_all_reduces_per_layer_and_no_gather(report, tp):
    # o_proj and down_proj each end in one all-reduce; attention stays local to each
    # device's heads (an all-gather would mean the cache or the heads were being collected).
    r = report[f"tp{tp}"]
    assert r["all_reduce"] == 2 * report["cfg"]["layers"]
    assert r["all_gather"] == 0


def test_bad_tp_is_a_clear_error(report):
    e = report["errors"]
    assert "tensor_parallel_size=3 must divide the model's num_kv_heads (4)" in e["3"]
    assert "tensor_parallel_size=8 exceeds the 4 available" in e["8"]


def test_config_rejects_non_positive_tp():
    from llmserve.config import EngineConfig
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        EngineConfig(tensor_parallel_size=0)


if __name__ == "__main__":
    print(json.dumps(_check(sys.argv[1] if len(sys.argv) > 1 else "reference")))
