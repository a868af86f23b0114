"""Calibration sweep: the real JaxRunner's step time over batch, context and chunk size.

Writes a JSON (kind "calib_sweep") that scripts/fit_profile.py fits the simulator's cost
model to (all six efficiency factors). Run by scripts/gpu_check.sh after the engine bench;
needs jax + absl + numpy only (no ml_collections), like the other GPU-check scripts.

  PYTHONPATH=. python scripts/calib_sweep.py --out=results/gpu_check/calib_sweep.json
  PYTHONPATH=. python scripts/calib_sweep.py --profile=smoke --out=results/calib_sweep.json  # CPU

Shapes run most informative first and the JSON is rewritten after each, so a timeout keeps
what was measured; --budget_s stops starting new shapes.
"""
import json
import os
import sys
import time

import numpy as np
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_OUT = flags.DEFINE_string("out", "results/calib_sweep.json", "JSON output path")
_PROFILE = flags.DEFINE_enum("profile", "gpu", ["gpu", "smoke"],
                             "gpu: Llama-3-8B shapes, pallas; smoke: tiny model on a CPU")
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps per shape (median kept)")
_BUDGET = flags.DEFINE_float("budget_s", 110.0, "start no new shape after this many seconds")

# (batch, context, chunk): decode (chunk 0) then mixed steps. The KV pool holds the largest
# batch x context (256 x 1024: 35 GB of bf16 Llama-3-8B KV, with the 16 GB of weights within
# an 80 GB H100).
PROFILES = {
    "gpu": dict(model="llama3-8b", impl="pallas", dtype="bfloat16", shapes=[
        (64, 1024, 0), (1, 1024, 0), (256, 1024, 0), (64, 512, 512), (16, 4096, 0),
        (1, 2048, 2048), (128, 512, 0), (16, 1024, 1024), (64, 2048, 256), (8, 512, 0),
        (32, 2048, 0), (4, 4096, 2048), (256, 256, 0), (8, 256, 128), (64, 4096, 0)]),
    "smoke": dict(model="tiny", impl="reference", dtype="float32", shapes=[
        (8, 64, 0), (1, 64, 0), (16, 128, 0), (4, 64, 32), (16, 32, 0), (1, 128, 128),
        (8, 128, 64), (4, 32, 0), (2, 128, 0)]),
}


def main(argv):
    del argv
    import jax

    from llmserve.model.config import get_preset
    from llmserve.model.params import init_params
    from llmserve.runner.jax_runner import JaxRunner
    from llmserve.sim.calibrate import sweep_output
    prof = PROFILES[_PROFILE.value]
    shapes = prof["shapes"]
    cfg = get_preset(prof["model"]).replace(dtype=prof["dtype"])
    bs = 16
    t_start = time.perf_counter()
    params = init_params(cfg, 0)
    jax.block_until_ready(params)
    per_seq = [b * -(-(c + 1) // bs) for b, c, _ in shapes]
    runner = JaxRunner(params, cfg, num_kv_blocks=max(per_seq), block_size=bs,
                       max_num_seqs=max(b for b, _, _ in shapes),
                       max_num_batched_tokens=max(b - 1 + max(q, 1) for b, _, q in shapes),
                       max_model_len=max(c for _, c, _ in shapes) + bs,
                       attention_impl=prof["impl"])
    res = dict(kind="calib_sweep", profile=_PROFILE.value, model=prof["model"],
               impl=prof["impl"], dtype=prof["dtype"], block_size=bs,
               device=str(jax.devices()[0].device_kind), jax=jax.__version__, rows=[])
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)

    def save():
        with open(_OUT.value, "w") as f:
            json.dump(res, f, indent=1)

    for batch, context, chunk in shapes:
        if time.perf_counter() - t_start > _BUDGET.value:
            logging.info("budget spent: %d of %d shapes", len(res["rows"]), len(shapes))
            break
        row = dict(batch=batch, context=context, chunk=chunk)
        try:
            t = time.perf_counter()
            runner.execute(sweep_output(batch, context, chunk, bs, 0))     # compiles
            row["compile_s"] = time.perf_counter() - t
            runner.execute(sweep_output(batch, context, chunk, bs, 1))
            times = [runner.execute(sweep_output(batch, context, chunk, bs, s + 2)).step_time_s
                     for s in range(_STEPS.value)]
            row["step_s"] = float(np.median(times))
            row["step_min_s"] = float(np.min(times))
        except Exception as e:  # keep the other shapes
            logging.exception("shape %s failed", row)
            row["error"] = f"{type(e).__name__}: {e}"[:1000]
        res["rows"].append(row)
        logging.info("%s", row)
        save()
    save()
    print(f"{res['device']}, {prof['model']} {prof['impl']}: {len(res['rows'])} shapes")
    print(f"{'batch':>6} {'context':>8} {'chunk':>6} {'step ms':>9} {'compile s':>9}")
    for r in res["rows"]:
        if "error" in r:
            print(f"{r['batch']:>6} {r['context']:>8} {r['chunk']:>6}  ERROR {r['error'][:80]}")
        else:
            print(f"{r['batch']:>6} {r['context']:>8} {r['chunk']:>6} {1e3 * r['step_s']:9.3f} "
                  f"{r['compile_s']:9.1f}")
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
