"""The logprob variants of the step under tensor parallelism (tp=2 on 2 host CPU devices): the
prompt logprobs, their alternatives and the output tokens' alternatives equal the unsharded
runner's. The device count must be set before jax is imported, so the run is a subprocess
(this file as a script) that prints JSON."""
import json
import os
import subprocess
import sys


def _run() -> dict:
    import numpy as np

    from llmserve.config import EngineConfig
    from llmserve.engine import LLMEngine
    from llmserve.model.config import get_preset
    from llmserve.model.params import init_params
    from llmserve.sampling_params import SamplingParams
    from llmserve.tokenizer import load_tokenizer

    cfg = get_preset("tiny").replace(hidden_size=256, intermediate_size=512, num_layers=2,
                                     num_heads=8, num_kv_heads=4, head_dim=64)
    model = (cfg, init_params(cfg, 0), load_tokenizer(None, cfg))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 256, n).tolist() for n in (40, 9)]
    sps = [SamplingParams(max_tokens=0, prompt_logprobs=3),
           SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True, top_logprobs=2,
                          prompt_logprobs=0)]
    out = {}
    for tp in (1, 2):
        eng = LLMEngine(EngineConfig(max_num_seqs=4, max_num_batched_tokens=16,
                                     max_model_len=64, tensor_parallel_size=tp), model=model)
        ids = [eng.add_request(p, sp) for p, sp in zip(prompts, sps)]
        done = {}
        while eng.has_unfinished():
            for o in eng.step():
                if o.finished:
                    done[o.request_id] = o
        out[tp] = [{"tokens": done[i].token_ids, "top": done[i].top_logprobs,
                    "prompt": done[i].prompt_logprobs} for i in ids]
    return out


def test_tp_logprob_variants_equal_unsharded():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    one, two = r["1"], r["2"]
    for a, b in zip(one, two):
        assert a["tokens"] == b["tokens"]
        assert (a["top"] is None) == (b["top"] is None)
        for x, y in zip(a["top"] or [], b["top"] or []):
            assert [t for t, _ in x] == [t for t, _ in y]
            assert all(abs(u - v) < 1e-4 for (_, u), (_, v) in zip(x, y))
        assert a["prompt"][0] is None and b["prompt"][0] is None
        assert len(a["prompt"]) == len(b["prompt"])
        for x, y in zip(a["prompt"][1:], b["prompt"][1:]):
            assert [t for t, _ in x] == [t for t, _ in y]
            assert all(abs(u - v) < 1e-4 for (_, u), (_, v) in zip(x, y))
    assert one[0]["tokens"] == [] and len(one[0]["prompt"][1]) == 4


if __name__ == "__main__":
    print(json.dumps(_run()))
