"""The seed's open claims, each as a table (issue 17): llmserve/sim/claims.py runs them.

  python scripts/claims_bench.py --config=configs/claims.py --workdir=results/claims
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmserve import bench
from llmserve.metrics.report import write_json
from llmserve.sim import claims

_CONFIG = config_flags.DEFINE_config_file("config", "configs/claims.py", "claims config")
_WORKDIR = flags.DEFINE_string("workdir", ".", "where claims.json goes")

SIM_COLS = [("output_throughput_tok_s", "out tok/s", 1, ".0f"),
            ("e2e_p50_s", "E2E p50 s", 1, ".2f"), ("e2e_p99_s", "E2E p99 s", 1, ".2f"),
            ("ttft_p50_s", "TTFT p50 s", 1, ".3f"),
            ("ttft_p99_s", "TTFT p99 s", 1, ".2f"), ("tpot_p99_s", "TPOT p99 ms", 1e3, ".1f"),
            ("kv_fragmentation", "KV frag", 1, ".1%"), ("preemptions", "preempt", 1, "d")]


def _cell(v, scale, fmt):
    if v is None:
        return "-"
    return format(v * scale if scale != 1 else v, fmt)


def table(rows, keys, cols=SIM_COLS):
    heads = [k for k, _ in keys] + [c[1] for c in cols]
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = [str(f(r)) for _, f in keys] + [_cell(r.get(k), s, f) for k, _, s, f in cols]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _vs_first(rows, group):
    """Throughput of each row as a fraction of the first row of its group."""
    first = {}
    for r in rows:
        g = group(r)
        first.setdefault(g, r["output_throughput_tok_s"])
        r["x_first"] = r["output_throughput_tok_s"] / first[g]


def main(argv):
    del argv
    c = _CONFIG.value
    exps = [e.strip() for e in c.experiments.split(",") if e.strip()]
    bad = [e for e in exps if e not in claims.EXPERIMENTS]
    if bad:
        raise app.UsageError(f"experiments must be a comma-separated subset of "
                             f"{claims.EXPERIMENTS}, got {bad}")
    sim = {"variance", "kv", "fragmentation", "budget"} & set(exps)
    setup = bench.make_setup(c.to_dict()) if sim else None
    out = {"config": c.to_dict(), "hardware": setup.hardware.name if setup else None}
    os.makedirs(_WORKDIR.value, exist_ok=True)
    path = os.path.join(_WORKDIR.value, c.out)
    texts = []
    for e in exps:
        logging.info("experiment %s", e)
        if e == "variance":
            rows = claims.exp_variance(setup, c.variance)
            _vs_first(rows, lambda r: r["cv"])
            t = table(rows, [("CV (real)", lambda r: f"{r['cv']:g} ({r['output_cv']:.2f})"),
                             ("mean out", lambda r: f"{r['output_mean']:.0f}"),
                             ("policy", lambda r: r["policy"]),
                             ("x static", lambda r: f"{r['x_first']:.2f}")])
        elif e == "kv":
            rows = claims.exp_kv(setup, c.kv)
            # Throughput against the noise-free prediction (the first row without a 0 error).
            base = next((r for r in rows if r["rel_error"] == 0), rows[0])
            for r in rows:
                r["x_base"] = r["output_throughput_tok_s"] / base["output_throughput_tok_s"]
            t = table(rows, [("policy", lambda r: r["policy"]),
                             (f"x {base['policy']}", lambda r: f"{r['x_base']:.3f}")])
        elif e == "fragmentation":
            rows = claims.exp_fragmentation(setup, c.fragmentation)
            t = table(rows, [("client max_tokens", lambda r: r["client_max_tokens"] or
                              "= trace length"), ("policy", lambda r: r["policy"])])
        elif e == "budget":
            rows = claims.exp_budget(setup, c.budget)
            t = table(rows, [("policy", lambda r: r["policy"]), ("budget", lambda r: r["budget"])])
        elif e == "noise_floor":
            rows = claims.exp_noise_floor(c.noise_floor)
            cols = [("prompts", "prompts", 1, "d"), ("samples", "samples", 1, "d"),
                    ("median_rel_error", "median rel err", 1, ".1%"),
                    ("mean_rel_error", "mean rel err", 1, ".1%"),
                    ("mae_tokens", "MAE tokens", 1, ".1f"),
                    ("split_half_median_rel_error", "split-half median rel err (5 vs 5)", 1, ".1%")]
            t = table(rows, [("dataset", lambda r: r["dataset"])], cols)
        else:
            rows = claims.exp_overhead(c.overhead)
            cols = [("us_per_request_step", "us / request-step", 1, ".2f"),
                    ("us_per_step", "us / step", 1, ".0f"),
                    ("ms_per_request_lifetime", "ms / request (life)", 1, ".3f"),
                    ("cpu_ms_per_request_lifetime", "CPU ms / request (life, + mock runner)",
                     1, ".3f"), ("load_average", "load avg", 1, ".1f")]
            t = table(rows, [("preset", lambda r: r["preset"]),
                             ("running", lambda r: r["running"])], cols)
        out[e] = rows
        texts.append(f"## {e} ({out['hardware'] or 'no simulator'})\n{t}")
        print(texts[-1] + "\n", flush=True)
        write_json(path, out)
    print("\n\n".join(texts))
    print(f"results: {path}")


if __name__ == "__main__":
    app.run(main)
