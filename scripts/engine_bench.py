"""Our engine against Hugging Face transformers generate() on this machine, same weights.

  python scripts/engine_bench.py --config=configs/engine_bench.py --workdir=results/engine_bench

config.model is a preset (default `tiny-32k`: a random Llama with a 32,000-token vocabulary,
so the sampler and the vocabulary projection cost what they cost on real models) whose dummy
weights are saved as an HF Llama checkpoint (safetensors) in a temp dir, or a checkpoint:
a Hugging Face directory, a .gguf file or a packaged name (smollm2-135m-instruct). Our engine
loads it and scripts/hf_reference_bench.py (in the Python 3.11 reference venv, torch +
transformers) loads the same files (config.hf.checkpoint overrides what it loads). Prompts are
random token ids of the model's vocabulary. All requests of a case arrive at once; both sides
are greedy with EOS ignored, so both produce exactly the requested tokens.
  (a) 16 prompts x 128 tokens -> 64 new tokens each (no padding for static batching)
  (b) 64 requests, prompt/output lengths from the Azure conversation trace scaled to the
      tiny model (prompts 16-512, outputs 8-256)
transformers runs static batches (left-padded; each batch decodes to its longest output). The
two sides alternate A B A B within one run, and medians are reported, with the ratio, our
host overhead (wall time outside the jitted step) and the compile count. Results JSON goes to
--workdir/engine_bench.json.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags, logging
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np

from llmserve import LLM, SamplingParams

import engine_bench_vllm  # the optional vLLM side, beside this script

_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs/engine_bench.py"),
                                          "benchmark config")
_WORKDIR = flags.DEFINE_string("workdir", "results/engine_bench", "where results JSON is written")

# Log-normal fits to the azure_conv_2023 dataset (19,366 requests), used only when asked for
# (b.synthetic): mean and std of log(tokens).
#   ContextTokens:   mu 6.6333, sigma 0.9852  (median 1020, p95 4083, p99 4142)
#   GeneratedTokens: mu 5.0190, sigma 0.8590  (median 129,  p95 451,  p99 601)
AZURE_CONV_LOGNORMAL = {"context": (6.6333, 0.9852), "generated": (5.0190, 0.8590)}


# ---- workloads --------------------------------------------------------------------------------
def case_a(c, rng, vocab: int) -> dict:
    a = c.a
    prompts = [rng.integers(0, vocab, a.prompt_len).tolist() for _ in range(a.num_prompts)]
    return {"name": "a", "desc": f"{a.num_prompts} x {a.prompt_len} -> {a.output_len}",
            "prompts": prompts, "output_lens": [a.output_len] * a.num_prompts}


def azure_lengths(b, rng) -> tuple[np.ndarray, np.ndarray, str]:
    """(context, generated) token counts of b.num_requests requests from the trace (rows
    drawn without replacement, so each request keeps its real prompt/output pairing)."""
    if not b.synthetic:
        from llmserve.workload import loaders
        path = loaders.workload_path({"kind": "azure_csv", "dataset": b.dataset,
                                      "path": b.trace})
        rows = [(r.prompt_len, r.output_len) for r in loaders.load_azure_csv(path)]
        idx = rng.choice(len(rows), size=b.num_requests, replace=len(rows) < b.num_requests)
        ctx = np.array([rows[i][0] for i in idx], np.float64)
        gen = np.array([rows[i][1] for i in idx], np.float64)
        return ctx, gen, f"trace {b.trace or b.dataset} ({len(rows)} rows)"
    (mc, sc), (mg, sg) = AZURE_CONV_LOGNORMAL["context"], AZURE_CONV_LOGNORMAL["generated"]
    return (rng.lognormal(mc, sc, b.num_requests), rng.lognormal(mg, sg, b.num_requests),
            "log-normal fit of the Azure conversation trace (b.synthetic)")


def case_b(c, rng, vocab: int) -> dict:
    b = c.b
    ctx, gen, source = azure_lengths(b, rng)
    p_lens = np.clip(np.round(ctx / b.prompt_scale), b.min_prompt, b.max_prompt).astype(int)
    o_lens = np.clip(np.round(gen / b.output_scale), b.min_output, b.max_output).astype(int)
    prompts = [rng.integers(0, vocab, n).tolist() for n in p_lens]
    return {"name": "b", "desc": f"{b.num_requests} Azure-shaped (prompts "
            f"{p_lens.min()}-{p_lens.max()}, median {int(np.median(p_lens))}; outputs "
            f"{o_lens.min()}-{o_lens.max()}, median {int(np.median(o_lens))})",
            "source": source, "prompts": prompts, "output_lens": o_lens.tolist()}


# ---- the two sides ----------------------------------------------------------------------------
class HFReference:
    """A warm scripts/hf_reference_bench.py subprocess; one JSON line per run."""

    def __init__(self, c, checkpoint: str, omp_wait_policy: str = ""):
        py = c.hf.python if os.path.isabs(c.hf.python) else os.path.join(ROOT, c.hf.python)
        if not os.path.exists(py):
            raise app.UsageError(f"reference Python {py} not found; create it with: python3.11 -m "
                                 "venv .ref311 && .ref311/bin/pip install torch==2.13.0 "
                                 "transformers safetensors numpy")
        threads = c.hf.threads or os.cpu_count()
        env = {**os.environ, "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        env.pop("PYTHONPATH", None)
        if omp_wait_policy:
            env["OMP_WAIT_POLICY"] = omp_wait_policy
        self.timeout_s = c.hf.timeout_s
        self.proc = subprocess.Popen(
            [py, os.path.join(ROOT, "scripts", "hf_reference_bench.py"), "--checkpoint",
             checkpoint, "--threads", str(threads), "--attn_implementation",
             c.hf.attn_implementation], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=env)
        self.info = {**self._read(), "omp_wait_policy": omp_wait_policy or "default"}
        logging.info("transformers side ready: %s", self.info)

    def _read(self) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout_s)
        if not ready:
            self.proc.kill()
            raise RuntimeError(f"hf_reference_bench.py gave no answer in {self.timeout_s}s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"hf_reference_bench.py exited (code {self.proc.wait()}); see its "
                               "stderr above")
        return json.loads(line)

    def run(self, case: dict, batch_size: int) -> dict:
        self.proc.stdin.write(json.dumps({"case": case["name"], "prompts": case["prompts"],
                                          "output_lens": case["output_lens"],
                                          "batch_size": batch_size}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def run_ours(llm, case: dict) -> dict:
    from llmserve.runner.jax_runner import JaxRunner
    sps = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
           for n in case["output_lens"]]
    st = llm.engine.runner.stats
    d0, p0, n0, c0 = st.device_s, st.prepare_s, st.num_steps, JaxRunner.jit_cache_size()
    t0 = time.perf_counter()
    outs = llm.generate(case["prompts"], sps)
    wall = time.perf_counter() - t0
    tokens = [list(o.token_ids) for o in outs]
    assert [len(t) for t in tokens] == case["output_lens"]
    generated = sum(case["output_lens"])
    device = st.device_s - d0
    return {"wall_s": wall, "generated_tokens": generated, "tokens_per_s": generated / wall,
            "device_s": device, "prepare_s": st.prepare_s - p0,
            "host_overhead": (wall - device) / wall, "steps": st.num_steps - n0,
            "compiles": JaxRunner.jit_cache_size() - c0, "tokens": tokens}


def agreement(ours: list[list[int]], theirs: list[list[int]]) -> dict:
    """How many greedy tokens agree (same weights, float32; a flip at a near-tie is possible
    and everything after it then differs, so the prefix matters more than the total)."""
    same = sum(a == b for a, b in zip(ours, theirs))
    prefix = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
              for a, b in zip(ours, theirs)]
    return {"identical_requests": same, "requests": len(ours),
            "matching_prefix_tokens": int(sum(prefix)),
            "tokens": int(sum(len(a) for a in ours))}


# ---- main -------------------------------------------------------------------------------------
def main(argv):
    del argv
    c = _CONFIG.value
    os.makedirs(_WORKDIR.value, exist_ok=True)
    rng = np.random.default_rng(c.seed)
    makers = {"a": case_a, "b": case_b}
    names = [n.strip() for n in c.cases.split(",") if n.strip()]
    for n in names:
        if n not in makers:
            raise app.UsageError(f"unknown case {n!r}; expected a subset of a,b")
    with model_checkpoint(c) as (ckpt, cfg):
        cases = [makers[n](c, rng, cfg.vocab_size) for n in names]
        longest = max(len(p) + o for cs in cases
                      for p, o in zip(cs["prompts"], cs["output_lens"]))
        if longest > c.engine.max_model_len:
            raise app.UsageError(f"engine.max_model_len {c.engine.max_model_len} < longest "
                                 f"request {longest}")
        results = bench(c, ckpt, cfg, cases)
    print_table(results, c)
    out = os.path.join(_WORKDIR.value, "engine_bench.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {out}")


@contextlib.contextmanager
def model_checkpoint(c):
    """(checkpoint both sides load, ModelConfig): a preset's dummy weights saved as an HF
    checkpoint in a temp dir (removed afterwards), or the checkpoint config.model names."""
    from llmserve.model import loader
    from llmserve.model.config import PRESETS, get_preset
    from llmserve.model.params import init_params
    if c.model in PRESETS:
        cfg = get_preset(c.model).replace(dtype="float32")
        with tempfile.TemporaryDirectory(prefix="engine_bench_ckpt_") as ckpt:
            loader.save_hf_checkpoint(init_params(cfg, c.seed), cfg, ckpt)
            logging.info("saved %s (%d params) as an HF checkpoint in %s", c.model,
                         cfg.num_params(), ckpt)
            yield ckpt, cfg
        return
    from llmserve.model.gguf_loader import resolve_checkpoint
    path = resolve_checkpoint(c.model)
    if path is None:
        raise app.UsageError(f"model {c.model!r} is neither a preset ({sorted(PRESETS)}) nor a "
                             "checkpoint directory, .gguf file or packaged model name")
    yield path, loader.load_config(path)


def bench(c, ckpt: str, cfg, cases: list[dict]) -> dict:
    """Both sides on every case, alternated round by round."""
    from llmserve.runner.jax_runner import JaxRunner
    results = {"config": c.to_dict(), "machine": {"cpus": os.cpu_count(),
                                                 "loadavg_start": os.getloadavg()}, "cases": {},
               "model": {"name": c.model, "vocab_size": cfg.vocab_size,
                         "num_params": cfg.num_params(), "num_layers": cfg.num_layers,
                         "hidden_size": cfg.hidden_size}}
    policies = [p.strip() for p in c.hf.omp_wait_policy.split(",")] or [""]
    hfs, vls = [], []
    try:
        hfs = [HFReference(c, c.hf.checkpoint or ckpt, pol) for pol in policies]
        results["transformers"] = hfs[0].info
        vls, results["vllm_side"] = engine_bench_vllm.open_sides(
            c, ckpt, c.engine.max_model_len)
        results["vllm_info"] = {v.mode: v.info for v in vls}
        t0 = time.perf_counter()
        llm = LLM(ckpt, dtype="float32", seed=c.seed, **c.engine.to_dict())
        results["ours_load_s"] = time.perf_counter() - t0
        for case in cases:
            warm = None
            if c.warmup:
                warm = run_ours(llm, case)
                logging.info("case %s warm-up: %.2fs, %d compiles", case["name"],
                             warm["wall_s"], warm["compiles"])
            runs = []
            for r in range(c.rounds):
                load = os.getloadavg()[0]
                ours = run_ours(llm, case)
                # Every OMP policy runs; the round's figure is the best one's.
                tries = [hf.run(case, c.hf.batch_size) for hf in hfs]
                for t, hf in zip(tries, hfs):
                    t["omp_wait_policy"] = hf.info["omp_wait_policy"]
                theirs = min(tries, key=lambda t: t["wall_s"])
                theirs["all_policies"] = {t["omp_wait_policy"]: t["wall_s"] for t in tries}
                logging.info("case %s round %d: ours %.1f tok/s, transformers %.1f tok/s "
                             "(load %.1f)", case["name"], r, ours["tokens_per_s"],
                             theirs["tokens_per_s"], load)
                runs.append({"ours": ours, "transformers": theirs, "loadavg": load,
                             "vllm": engine_bench_vllm.run_sides(vls, case)})
            results["cases"][case["name"]] = summarize(case, runs, warm, c)
        results["total_compiles"] = JaxRunner.jit_cache_size()
        results["compiled_shapes"] = sorted(llm.engine.runner.stats.compiled_shapes)
    finally:
        for hf in hfs + vls:
            hf.close()
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["machine"]["busy"] = any(
        run["loadavg"] > 1.25 * (os.cpu_count() or 1)
        for r in results["cases"].values() for run in r["runs"])
    return results


def summarize(case: dict, runs: list[dict], warm: dict | None, c) -> dict:
    med = statistics.median
    ours = [r["ours"] for r in runs]
    theirs = [r["transformers"] for r in runs]
    o_tps, h_tps = med(x["tokens_per_s"] for x in ours), med(x["tokens_per_s"] for x in theirs)
    strip = lambda d: {k: v for k, v in d.items() if k != "tokens"}
    return {
        "desc": case["desc"], "source": case.get("source"),
        "num_requests": len(case["prompts"]),
        "prompt_tokens": sum(len(p) for p in case["prompts"]),
        "generated_tokens": sum(case["output_lens"]),
        "ours_tokens_per_s": o_tps, "transformers_tokens_per_s": h_tps, "ratio": o_tps / h_tps,
        "target": c.target_a if case["name"] == "a" else c.target_b,
        "ours_host_overhead": med(x["host_overhead"] for x in ours),
        "ours_compiles_timed": sum(x["compiles"] for x in ours),
        "ours_compiles_warmup": None if warm is None else warm["compiles"],
        "ours_warmup_s": None if warm is None else warm["wall_s"],
        "transformers_batch_size": theirs[0]["batch_size"],
        "transformers_padding_waste": 1 - sum(case["output_lens"]) /
        theirs[0]["decode_token_slots"],
        "agreement": agreement(ours[-1]["tokens"], theirs[-1]["tokens"]),
        **engine_bench_vllm.summarize(runs, o_tps, ours[-1]["tokens"], agreement),
        "runs": [{"ours": strip(r["ours"]), "transformers": strip(r["transformers"]),
                  "loadavg": r["loadavg"]} for r in runs],
    }


def print_table(results: dict, c) -> None:
    print()
    m = results["model"]
    print(f"engine_bench: model {c.model} (vocabulary {m['vocab_size']}, {m['num_layers']} layers, "
          f"hidden {m['hidden_size']}) float32, {results['machine']['cpus']} CPUs, "
          f"transformers: best of OMP_WAIT_POLICY={c.hf.omp_wait_policy or 'default'} "
          f"per round, "
          f"{c.rounds} alternating rounds (A B ...), medians; "
          f"transformers {results['transformers'].get('transformers')} "
          f"torch {results['transformers'].get('torch')} "
          f"({results['transformers'].get('threads')} threads, "
          f"{results['transformers'].get('attn_implementation')})")
    hdr = (f"{'case':<5} {'ours tok/s':>10} {'HF tok/s':>9} {'ratio':>6} {'target':>6} "
           f"{'host ovh':>8} {'compiles':>8} {'HF pad':>7} {'same greedy':>11}  workload")
    print(hdr)
    print("-" * len(hdr))
    for name, r in results["cases"].items():
        ag = r["agreement"]
        comp = f"{r['ours_compiles_warmup'] or 0}+{r['ours_compiles_timed']}"
        print(f"{name:<5} {r['ours_tokens_per_s']:>10.1f} {r['transformers_tokens_per_s']:>9.1f} "
              f"{r['ratio']:>5.2f}x {r['target']:>5.1f}x {r['ours_host_overhead']:>8.1%} "
              f"{comp:>8} {r['transformers_padding_waste']:>7.1%} "
              f"{ag['identical_requests']:>5}/{ag['requests']:<5}  {r['desc']}")
    print("host ovh: share of our wall time outside the jitted step (scheduling, batch "
          "building, outputs); compiles: warm-up + timed; HF pad: decode slots spent on "
          "padding by static batching; same greedy: requests whose tokens equal transformers'.")
    print(f"total compiled step executables: {results.get('total_compiles')}; transformers "
          f"static batch size: {c.hf.batch_size or 'whole case'}")
    loads = [run["loadavg"] for r in results["cases"].values() for run in r["runs"]]
    cpus = results["machine"]["cpus"] or 1
    if loads and max(loads) > 1.25 * cpus:
        print(f"WARNING: the machine was busy (1-min load average up to {max(loads):.1f} on "
              f"{cpus} CPUs). torch's OpenMP threads slow down far more than XLA's when "
              "oversubscribed (OMP_WAIT_POLICY=PASSIVE softens it), so treat the ratios as "
              "rough; rerun on an idle machine.")
    engine_bench_vllm.print_table(results)


if __name__ == "__main__":
    app.run(main)
