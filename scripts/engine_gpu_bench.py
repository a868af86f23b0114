"""Engine decode throughput on a GPU: `pallas` vs `reference` attention, and bandwidth use.

Runs the real JaxRunner step (host batch building, jitted forward + sampling, one transfer)
on decode batches of `--batch` sequences at `--context` tokens, and on mixed steps (one
`--chunk`-token prefill chunk + batch - 1 decodes, the ragged kernel's path), for the `tiny` and
Llama-3-8B-shaped dummy models. Model bandwidth utilisation (MBU) = (weight bytes + KV bytes
read) per step / step time, against a copy bandwidth measured in the same run. Also checks
that both attention paths give the same greedy tokens through LLM.generate on `tiny`.
Needs jax (+absl) only: no ml_collections, so it runs on a stock CUDA machine.

  PYTHONPATH=. python scripts/engine_gpu_bench.py --out=results/engine_gpu.json
"""
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmserve.core.sched_output import ScheduledRequest, SchedulerOutput
from llmserve.model.config import get_preset
from llmserve.model.params import init_params
from llmserve.runner.jax_runner import JaxRunner

FLAGS = flags.DEFINE_string("out", "results/engine_gpu.json", "JSON output path")
_MODELS = flags.DEFINE_list("models", ["tiny", "llama3-8b"], "presets to run")
_BATCH = flags.DEFINE_integer("batch", 64, "decode batch size")
_CONTEXT = flags.DEFINE_integer("context", 1024, "context length of every sequence")
_STEPS = flags.DEFINE_integer("steps", 20, "timed decode steps")
_IMPLS = flags.DEFINE_list("impls", ["reference", "pallas"], "attention implementations")
_CHUNK = flags.DEFINE_integer("chunk", 512, "mixed steps: one prefill chunk of this many "
                              "tokens (ending at --context) with batch - 1 decodes; 0: none")


def decode_output(batch, context, block_size, step):
    per_seq = -(-(context + 1) // block_size)
    scheduled = []
    for i in range(batch):
        blocks = list(range(i * per_seq, (i + 1) * per_seq))
        scheduled.append(ScheduledRequest(str(i), [i % 200 + 1], context - 1, blocks, True,
                                          step, (0.0, -1, 1.0, i)))
    return SchedulerOutput(step, scheduled, batch)


def mixed_output(batch, context, block_size, step, chunk):
    """Sequence 0 prefills its last `chunk` prompt tokens; the others decode (ragged path)."""
    out = decode_output(batch, context, block_size, step)
    first = out.scheduled[0]
    first.token_ids = [(7 * k) % 200 + 1 for k in range(chunk)]
    first.start_pos = context - chunk
    out.num_scheduled_tokens = batch - 1 + chunk
    return out


def time_steps(runner, make, steps):
    """Compile + one warm-up step, then the median of `steps` measured step times."""
    t = time.perf_counter()
    runner.execute(make(0))
    compile_s = time.perf_counter() - t
    runner.execute(make(1))
    times = [runner.execute(make(s + 2)).step_time_s for s in range(steps)]
    return float(np.median(times)), compile_s


def bench_model(name, impls, batch, context, steps, bw, chunk):
    cfg = get_preset(name)
    if name == "tiny":
        cfg = cfg.replace(dtype="bfloat16")
    t = time.perf_counter()
    params = init_params(cfg, 0)
    jax.block_until_ready(params)
    logging.info("%s: %.2fB params initialised in %.1fs", name, cfg.num_params() / 1e9,
                 time.perf_counter() - t)
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    itemsize = jnp.dtype(cfg.dtype).itemsize
    kv_bytes = batch * context * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2 * itemsize
    block_size = 16
    per_seq = -(-(context + 1) // block_size)
    rows = []
    for impl in impls:
        row = dict(model=name, impl=impl, batch=batch, context=context)
        try:
            runner = JaxRunner(params, cfg, num_kv_blocks=batch * per_seq, block_size=block_size,
                               max_num_seqs=batch, max_num_batched_tokens=batch,
                               max_model_len=context + block_size, attention_impl=impl)
            st, row["compile_s"] = time_steps(
                runner, lambda s: decode_output(batch, context, block_size, s), steps)
            prep = runner.stats.prepare_s / runner.stats.num_steps
            row.update(step_ms=st * 1e3, tokens_per_s=batch / st, host_prepare_ms=prep * 1e3,
                       weight_gb=weight_bytes / 1e9, kv_gb=kv_bytes / 1e9,
                       mbu=(weight_bytes + kv_bytes) / st / bw)
            del runner
            if chunk > 0:  # a chunked-prefill step: the ragged kernel's path in the model
                runner = JaxRunner(params, cfg, num_kv_blocks=batch * per_seq,
                                   block_size=block_size, max_num_seqs=batch,
                                   max_num_batched_tokens=batch + chunk,
                                   max_model_len=context + block_size, attention_impl=impl)
                mt, _ = time_steps(
                    runner, lambda s: mixed_output(batch, context, block_size, s, chunk), steps)
                row.update(mixed_chunk=chunk, mixed_step_ms=mt * 1e3,
                           mixed_tokens_per_s=(batch - 1 + chunk) / mt)
                del runner
        except Exception as e:  # keep the other rows
            logging.exception("%s %s failed", name, impl)
            row["error"] = f"{type(e).__name__}: {e}"[:2000]
        rows.append(row)
        logging.info("%s", row)
    return rows


def greedy_agreement(impls):
    from llmserve import LLM, SamplingParams
    rng = np.random.default_rng(0)
    prompts = [[int(t) for t in rng.integers(0, 256, n)] for n in (3, 17, 64, 130, 300, 31)]
    sp = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    outs = {}
    for impl in impls:
        llm = LLM("tiny", dtype="float32", attention_impl=impl, max_num_batched_tokens=128,
                  max_num_seqs=8, max_model_len=512)
        outs[impl] = [o.token_ids for o in llm.generate(prompts, sp)]
    a, b = outs[impls[0]], outs[impls[-1]]
    same = sum(x == y for x, y in zip(a, b))
    # Token agreement up to the first divergence (TF32 dots on GPU can flip near-ties).
    prefix = [next((k for k, (u, v) in enumerate(zip(x, y)) if u != v), len(x))
              for x, y in zip(a, b)]
    return dict(identical_sequences=same, num_sequences=len(a), agree_prefix=prefix)


def main(argv):
    del argv
    res = dict(device=str(jax.devices()[0].device_kind), jax=jax.__version__)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.value)), exist_ok=True)

    def save():
        with open(FLAGS.value, "w") as f:
            json.dump(res, f, indent=1)

    # The kernel benchmark's measurement, so engine MBU and kernel %-of-copy share a ceiling.
    from pallas_kernels.benchmark import copy_bandwidth
    res["copy_bandwidth_gbs"] = copy_bandwidth()["gbps"]
    save()
    res["rows"] = []
    for name in _MODELS.value:
        res["rows"] += bench_model(name, _IMPLS.value, _BATCH.value, _CONTEXT.value,
                                   _STEPS.value, res["copy_bandwidth_gbs"] * 1e9, _CHUNK.value)
        save()
    try:
        res["greedy_agreement"] = greedy_agreement(_IMPLS.value)
    except Exception as e:
        logging.exception("greedy agreement failed")
        res["greedy_agreement"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    save()
    print(f"\n{res['device']}, jax {res['jax']}, copy bandwidth "
          f"{res['copy_bandwidth_gbs']:.0f} GB/s; greedy agreement: {res['greedy_agreement']}")
    print(f"{'model':>10} {'impl':>10} {'step ms':>9} {'tok/s':>9} {'host ms':>8} {'MBU':>6} "
          f"{'compile s':>9} {'mixed ms':>9} {'mixed tok/s':>11}")
    for r in res["rows"]:
        if "error" in r:
            print(f"{r['model']:>10} {r['impl']:>10}  ERROR {r['error'][:100]}")
            continue
        print(f"{r['model']:>10} {r['impl']:>10} {r['step_ms']:9.2f} {r['tokens_per_s']:9.0f} "
              f"{r['host_prepare_ms']:8.2f} {r['mbu']:6.1%} {r['compile_s']:9.1f} "
              f"{r.get('mixed_step_ms', float('nan')):9.2f} "
              f"{r.get('mixed_tokens_per_s', float('nan')):11.0f}")
    print(f"wrote {FLAGS.value}")


if __name__ == "__main__":
    app.run(main)
