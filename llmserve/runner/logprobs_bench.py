"""What asking for logprobs costs: one batch of requests through LLM.generate, timed per
variant (none, top_logprobs, prompt_logprobs, prompt-only max_tokens=0), after an untimed run
of the same batch compiles that variant's step shapes. Wall time is the best of --repeats.

    python -m llmserve.runner.logprobs_bench --model tiny --num-requests 32
    python -m llmserve.runner.logprobs_bench --model tiny --vocab-size 32000
    python -m llmserve.runner.logprobs_bench --model tiny --vocab-size 32000 --steps 7

--steps times the jitted step alone per variant (median, variants interleaved) on the batch's
first prefill step and on a decode step: less noisy than whole runs on a shared machine.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from llmserve.engine import LLM
from llmserve.sampling_params import SamplingParams

VARIANTS = {
    "none": {},
    "logprobs": {"logprobs": True},
    "top_logprobs=5": {"top_logprobs": 5},
    "prompt_logprobs=0": {"prompt_logprobs": 0},
    "prompt_logprobs=5": {"prompt_logprobs": 5},
    "prompt_logprobs=1, max_tokens=0": {"prompt_logprobs": 1, "max_tokens": 0},
}


def setup(model: str, num_requests: int, prompt_len: int, max_tokens: int,
          max_num_batched_tokens: int, vocab_size: int = 0, seed: int = 0):
    llm = LLM(model, max_num_seqs=num_requests, max_model_len=prompt_len + max_tokens + 80,
              max_num_batched_tokens=max_num_batched_tokens)
    if vocab_size:
        # The same model with another vocabulary (dummy weights, no tokenizer): the
        # vocabulary projection is what the logprob variants add to.
        from llmserve.engine import LLMEngine
        from llmserve.model.params import init_params
        cfg = llm.engine.model_config.replace(vocab_size=vocab_size)
        llm.engine = LLMEngine(llm.engine.config, model=(cfg, init_params(cfg, seed), None))
    vocab = llm.engine.model_config.vocab_size
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, vocab, int(n)).tolist()
               for n in rng.integers(prompt_len // 2, prompt_len + 1, num_requests)]
    return llm, prompts


def run(llm, prompts, max_tokens: int, repeats: int) -> list[dict]:
    sps = {name: SamplingParams(**{"max_tokens": max_tokens, "temperature": 0.0,
                                   "ignore_eos": True, **kw}) for name, kw in VARIANTS.items()}
    for sp in sps.values():
        llm.generate(prompts, sp)          # compiles each variant's shapes
    # Rounds over the variants in a new random order each, best of `repeats` each: a load
    # that drifts during the run (a shared machine) hits every variant alike.
    best = dict.fromkeys(sps, float("inf"))
    n_out = {}
    rng = np.random.default_rng(1)
    for _ in range(repeats):
        for name in rng.permutation(list(sps)).tolist():
            sp = sps[name]
            t0 = time.perf_counter()
            outs = llm.generate(prompts, sp)
            best[name] = min(best[name], time.perf_counter() - t0)
            n_out[name] = sum(len(o.token_ids) for o in outs)
    n_prompt = sum(len(p) for p in prompts)
    return [{"variant": name, "wall_s": best[name], "output_tokens": n_out[name],
             "tokens_per_s": (n_prompt + n_out[name]) / best[name]} for name in sps]


def step_times(llm, prompts, reps: int) -> list[dict]:
    """The jitted step alone (dispatch to its one transfer), per variant, on the batch's first
    prefill step and on a decode step of all of them: median of `reps` calls, the variants
    interleaved. Less noisy than whole runs on a shared machine."""
    import jax

    from llmserve.runner.jax_runner import PROMPT_CHOSEN, PROMPT_OFF, PROMPT_TOP
    eng = llm.engine
    runner, sched = eng.runner, eng.scheduler
    sp = SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True, top_logprobs=5,
                        prompt_logprobs=5)
    ids = [eng.add_request(p, sp) for p in prompts]

    def timed(sched_out, variants):
        batch, shape = runner.prepare(sched_out)
        with_rows = dict(batch)
        runner._prompt_rows(sched_out, with_rows)
        times = {v: [] for v in variants}
        for _ in range(reps + 1):                   # the first round compiles
            for v in variants:
                b = with_rows if v[2] != PROMPT_OFF else batch
                t0 = time.perf_counter()
                tokens, lps, runner.kv_cache = runner._run_step(b, shape[3], *v[1:])
                jax.device_get((tokens, lps))
                times[v].append(time.perf_counter() - t0)
        return [{"step": f"{sched_out.num_scheduled_tokens} tokens, "
                 f"{len(sched_out.scheduled)} seqs", "variant": v[0],
                 "ms": 1e3 * float(np.median(ts[1:]))} for v, ts in times.items()]

    so = sched.schedule(time.perf_counter())
    rows = timed(so, [
        ("none", False, PROMPT_OFF), ("top_logprobs", True, PROMPT_OFF),
        ("prompt_logprobs=0", False, PROMPT_CHOSEN), ("prompt_logprobs=20", False, PROMPT_TOP)])
    # The real steps, up to the first in which every request decodes.
    while True:
        sched.update_from_output(so, runner.execute(so), time.perf_counter())
        so = sched.schedule(time.perf_counter())
        if len(so.scheduled) == len(prompts) and all(
                len(r.token_ids) == 1 and r.start_pos >= len(r.sampling[6])
                for r in so.scheduled):
            break
    rows += timed(so, [("none", False, PROMPT_OFF), ("top_logprobs", True, PROMPT_OFF)])
    for i in ids:
        eng.abort(i)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=128, help="longest prompt (shortest: half)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-num-batched-tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per variant (best)")
    ap.add_argument("--vocab-size", type=int, default=0,
                    help="replace the model's vocabulary size (dummy weights); 0 keeps it")
    ap.add_argument("--steps", type=int, default=0,
                    help="time the jitted step alone per variant, median of this many calls, "
                         "instead of whole runs")
    a = ap.parse_args(argv)
    llm, prompts = setup(a.model, a.num_requests, a.prompt_len, a.max_tokens,
                         a.max_num_batched_tokens, a.vocab_size)
    if a.steps:
        print(f"{'step':26} {'variant':20} {'ms (median)':>12}")
        for r in step_times(llm, prompts, a.steps):
            print(f"{r['step']:26} {r['variant']:20} {r['ms']:12.1f}")
        return
    rows = run(llm, prompts, a.max_tokens, a.repeats)
    base = rows[0]["wall_s"]
    print(f"{'variant':34} {'wall s':>8} {'vs none':>8} {'tok/s':>9}")
    for r in rows:
        print(f"{r['variant']:34} {r['wall_s']:8.3f} {r['wall_s'] / base:8.2f} "
              f"{r['tokens_per_s']:9.0f}")


if __name__ == "__main__":
    main()
