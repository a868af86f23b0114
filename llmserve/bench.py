"""The benchmark behind scripts/benchmark.py: `run(config) -> results dict`.

Each policy (a preset name, or `preset+knob=value+...`) replays the identical request stream
on a fresh engine: the real JAX engine on the wall clock (`runner = jax`) or the simulator in
virtual time (`runner = sim`). `sweep` adds request-rate curves, a token-budget sweep, a
capacity search (the highest rate whose p99 TTFT and p99 TPOT meet the SLOs, by bisection as
Sarathi-Serve reports capacity) and a predictor-noise sweep; `mode = fidelity` calibrates the
cost model on real runner step times and predicts a different workload.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time

import numpy as np

from llmserve.config import EngineConfig
from llmserve.metrics import figures as figures_lib
from llmserve.metrics import report
from llmserve.metrics.summary import latencies, summarize
from llmserve.workload import summarize as workload_summary
from llmserve.workload.replay import VirtualClock, replay

log = logging.getLogger(__name__)

RUNNERS = ("jax", "sim")
SWEEPS = ("rate", "budget", "capacity", "noise")


def _cfg_dict(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


_g = figures_lib.dotted_get


def _floats(s, field) -> list[float]:
    if isinstance(s, (list, tuple)):
        return [float(x) for x in s]
    try:
        return [float(x) for x in str(s).replace(" ", "").split(",") if x]
    except ValueError:
        raise ValueError(f"{field} must be comma-separated numbers, got {s!r}") from None


def _value(v: str):
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def parse_policy(spec: str) -> tuple[str, dict]:
    """'chunked' -> ('chunked', {}); 'static+queue_policy=length_bins' -> (static, {...})."""
    preset, *knobs = spec.strip().split("+")
    kw = {}
    for k in knobs:
        name, eq, val = k.partition("=")
        if not eq:
            raise ValueError(f"policy {spec!r}: knob {k!r} must be written name=value")
        kw[name.strip()] = _value(val.strip())
    return preset.strip(), kw


# ---- the setup shared by every run of one benchmark ----------------------------------------------
@dataclasses.dataclass
class Setup:
    cfg: dict
    runner: str
    model_config: object
    model: tuple | None            # (ModelConfig, params, tokenizer) for jax
    workload: list
    base_rate: float               # the workload's own mean arrival rate (req/s)
    cost_model: object | None      # sim: the step-time model; jax: counts FLOPs for MFU
    hardware: object
    num_kv_blocks: int

    def engine_config(self, policy: str, **over) -> EngineConfig:
        preset, knobs = parse_policy(policy)
        eng = dict(self.cfg.get("engine", {}))
        eng.update(knobs)
        eng.update(over)
        eng["policy"] = preset
        eng["model"] = self.cfg["model"].get("path") or self.cfg["model"]["preset"]
        eng["num_kv_blocks"] = self.num_kv_blocks
        if self.runner == "sim":
            eng["load_format"] = "dummy"
        from llmserve.core.scheduler import PRESET_KNOBS
        chunked = eng.get("chunked_prefill")
        if chunked is None:
            chunked = PRESET_KNOBS.get(preset, {}).get("chunked_prefill", True)
        if not chunked:     # whole prompts: the budget must hold the longest one
            eng["max_num_batched_tokens"] = max(eng["max_num_batched_tokens"],
                                                eng["max_model_len"])
        return EngineConfig.from_dict(eng)

    def make_engine(self, ec: EngineConfig):
        from llmserve.engine import LLMEngine
        if self.runner == "sim":
            from llmserve.runner.sim_runner import SimRunner
            return LLMEngine(ec, runner=SimRunner(self.cost_model),
                             model=(self.model_config, None, None), clock=VirtualClock())
        return LLMEngine(ec, model=self.model)


def _checkpoint(cfg: dict) -> str | None:
    """model.path, else a model.preset that names a checkpoint (a packaged model such as
    smollm2-135m-instruct): its directory or GGUF file; None for a dummy-weight preset."""
    from llmserve.model.gguf_loader import resolve_checkpoint
    return resolve_checkpoint(_g(cfg, "model.path") or _g(cfg, "model.preset", "tiny"))


def _model_config(cfg: dict):
    path = _checkpoint(cfg)
    if path:
        from llmserve.model import loader
        return loader.load_config(path)
    from llmserve.model.config import get_preset
    mc = get_preset(_g(cfg, "model.preset", "tiny"))
    dtype = _g(cfg, "engine.dtype", "auto")
    return mc if dtype in (None, "auto") else mc.replace(dtype=dtype)


def load_workload(cfg: dict, model_config=None) -> tuple[list, float]:
    """(requests, base rate in req/s) from the `workload` section."""
    from llmserve.workload import loaders, synthetic
    w = cfg["workload"]
    kind = w["kind"]
    n = w.get("num_requests") or None
    seed = w.get("seed", 0)
    max_len = _g(cfg, "engine.max_model_len")
    if kind == "synthetic":
        kw = {k: tuple(v) if isinstance(v, list) else v
              for k, v in (w.get("synthetic") or {}).items()}
        reqs = synthetic.synthetic_workload(n or 1000, w["rate"], seed=seed,
                                            max_model_len=max_len,
                                            vocab_size=getattr(model_config, "vocab_size", 256),
                                            **kw)
    else:
        path = loaders.workload_path(w)     # the dataset's file, or an explicit path
        tok = None
        if kind in ("sharegpt", "alpaca") and _checkpoint(cfg):
            from llmserve.tokenizer import load_tokenizer
            tok = load_tokenizer(_checkpoint(cfg), model_config)
        reqs = loaders.load(kind, path, tokenizer=tok, limit=n, seed=seed)
        if not reqs:
            raise ValueError(f"workload file {path!r} gave no requests")
        if kind in ("sharegpt", "alpaca", "castillo") or all(r.arrival_s == 0 for r in reqs):
            from llmserve.workload import with_arrivals
            rate = w.get("rate") or 1.0
            reqs = with_arrivals(reqs, synthetic.poisson_arrivals(
                len(reqs), rate, np.random.default_rng(seed)))
    reqs.sort(key=lambda r: r.arrival_s)
    span = reqs[-1].arrival_s - reqs[0].arrival_s
    base = (len(reqs) - 1) / span if span > 0 else float(w.get("rate") or 1.0)
    return reqs, base


@functools.lru_cache(maxsize=4)
def _jax_model(name: str, dtype: str, seed: int):
    from llmserve.engine import _resolve_model
    mc, params, tok, _ = _resolve_model(EngineConfig(model=name, dtype=dtype, seed=seed))
    return mc, params, tok


def _efficiency(cfg: dict, hw=None):
    import json

    from llmserve.sim.cost_model import Efficiency
    eff = dict(getattr(hw, "efficiency", ()))     # a fitted profile's factors, then overrides
    path = _g(cfg, "cost_model.calibration")
    if path:
        with open(path) as f:
            data = json.load(f)
        eff = data.get("efficiency", data)
    for k, v in (_g(cfg, "cost_model.efficiency") or {}).items():
        if v is not None:
            eff[k] = v
    return Efficiency(**eff)


def make_setup(config) -> Setup:
    cfg = _cfg_dict(config)
    runner = cfg.get("runner", "sim")
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {RUNNERS}, got {runner!r}")
    from llmserve.sim.cost_model import CostModel
    from llmserve.sim.hardware import get_hardware
    mc = _model_config(cfg)
    model = None
    if runner == "jax":
        hw = get_hardware("cpu")
        name = _g(cfg, "model.path") or _g(cfg, "model.preset")
        model = _jax_model(name, _g(cfg, "engine.dtype", "auto"), _g(cfg, "engine.seed", 0))
        mc = model[0]
    else:
        hw = get_hardware(cfg.get("hardware", "h100-80gb"))
    bs = _g(cfg, "engine.block_size", 16)
    cm = CostModel(mc, hw, _efficiency(cfg, hw), block_size=bs)
    nb = _g(cfg, "engine.num_kv_blocks") or 0
    if not nb:
        if runner == "sim":
            nb = cm.num_kv_blocks(bs, _g(cfg, "cost_model.memory_utilization", 0.9))
        else:
            e = cfg["engine"]
            nb = e["max_num_seqs"] * -(-e["max_model_len"] // bs)
    reqs, base = load_workload(cfg, mc)
    return Setup(cfg, runner, mc, model, reqs, base, cm, hw, nb)


# ---- one run ------------------------------------------------------------------------------------
def run_policy(setup: Setup, policy: str, *, rate: float | None = None, label: str = "",
               keep_latencies: bool = False, counter=None, **engine_over):
    """Replay the workload under one policy at `rate` req/s (default: the workload's own)."""
    cfg = setup.cfg
    ec = setup.engine_config(policy, **engine_over)
    eng = setup.make_engine(ec)
    scale = (rate / setup.base_rate) if rate else 1.0
    res = replay(eng, setup.workload, rate_scale=scale, seed=_g(cfg, "workload.seed", 0),
                 time_limit_s=_g(cfg, "workload.time_limit_s") or None,
                 counter=counter if counter is not None else (
                     setup.cost_model if setup.runner == "jax" else None),
                 label=label or policy)
    m = summarize(res, slo_ttft_s=_g(cfg, "slo.ttft_s", 2.0), slo_tpot_s=_g(cfg, "slo.tpot_s", 0.1),
                  num_kv_blocks=setup.num_kv_blocks, hardware=setup.hardware)
    m["rate_rps"] = (rate or setup.base_rate)
    lat = latencies(res.requests) if keep_latencies else None
    return (m, lat, res) if keep_latencies else m


def _policies(cfg) -> list[str]:
    p = cfg.get("policies", "static,continuous,chunked,predictive")
    names = [x.strip() for x in (p.split(",") if isinstance(p, str) else p) if x.strip()]
    if not names:
        raise ValueError("policies must name at least one policy")
    return names


def _progress(name: str, m: dict) -> None:
    log.info("%-28s done: %d/%d finished, %.1f out tok/s, TTFT p99 %.3fs, TPOT p99 %.1fms, "
             "%.1fs wall", name, m["num_finished"], m["num_requests"],
             m["output_throughput_tok_s"], m["ttft_p99_s"] or np.nan,
             1e3 * (m["tpot_p99_s"] or np.nan), m["wall_s"])


def capacity_search(setup: Setup, policy: str, lo: float, hi: float, iters: int,
                    slo_ttft_s: float, slo_tpot_s: float) -> dict:
    """Highest rate in [lo, hi] at which p99 TTFT <= slo_ttft_s and p99 TPOT <= slo_tpot_s,
    by bisection (the metrics are assumed to grow with load)."""
    probes = []

    def ok(rate):
        m = run_policy(setup, policy, rate=rate, label=f"{policy}@{rate:.2f}")
        good = (m["num_finished"] == m["num_requests"] and m["ttft_p99_s"] <= slo_ttft_s
                and m["tpot_p99_s"] <= slo_tpot_s)
        probes.append({"rate_rps": rate, "ok": bool(good), "ttft_p99_s": m["ttft_p99_s"],
                           "tpot_p99_s": m["tpot_p99_s"],
                           "output_throughput_tok_s": m["output_throughput_tok_s"]})
        log.info("capacity %s: %.2f req/s -> p99 TTFT %.2fs, p99 TPOT %.1fms: %s", policy, rate,
                 m["ttft_p99_s"], 1e3 * m["tpot_p99_s"], "ok" if good else "violates")
        return good

    if not ok(lo):
        return {"capacity_rps": 0.0, "probes": probes}
    if ok(hi):
        return {"capacity_rps": hi, "probes": probes, "note": "meets the SLOs at the upper bound"}
    for _ in range(iters):
        mid = (lo * hi) ** 0.5      # geometric: rates span orders of magnitude
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return {"capacity_rps": lo, "probes": probes}


def chat_samples(setup: Setup, prompts: list[str], max_tokens: int) -> list[dict]:
    """Greedy replies of the benchmarked model to user messages, through its chat template:
    what the model the table measured actually writes."""
    from llmserve.sampling_params import SamplingParams
    from llmserve.tokenizer import chat_template_for, encode_chat
    tok = setup.model[2]
    template = chat_template_for(tok)
    eng = setup.make_engine(setup.engine_config("chunked"))
    sp = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    t0 = time.perf_counter()
    ids = [eng.add_request(encode_chat(tok, template.render([{"role": "user", "content": q}])),
                           sp) for q in prompts]
    done = {}
    while eng.has_unfinished():
        for o in eng.step():
            if o.finished:
                done[o.request_id] = o
    log.info("chat samples: %d replies in %.1fs", len(prompts), time.perf_counter() - t0)
    return [{"prompt": q, "text": done[i].text, "num_tokens": len(done[i].token_ids),
             "finish_reason": done[i].finish_reason} for q, i in zip(prompts, ids)]


def run(config) -> dict:
    """Run the benchmark a config describes; returns the results dict (see module doc)."""
    cfg = _cfg_dict(config)
    if cfg.get("mode", "compare") == "fidelity":
        return run_fidelity(config)
    setup = make_setup(cfg)
    names = _policies(cfg)
    slo_ttft, slo_tpot = _g(cfg, "slo.ttft_s", 2.0), _g(cfg, "slo.tpot_s", 0.1)
    wl = workload_summary(setup.workload)
    log.info("workload: %d requests, %.2f req/s, prompt mean %.0f, output mean %.0f (cv %.2f)",
             wl["num_requests"], setup.base_rate, wl["prompt_len_mean"], wl["output_len_mean"],
             wl["output_len_cv"])
    out = {"config": cfg, "workload": wl, "runner": setup.runner, "hardware": setup.hardware.name,
               "num_kv_blocks": setup.num_kv_blocks,
               "cost_model": dataclasses.asdict(setup.cost_model.efficiency)
               if setup.runner == "sim" else None, "policies": {},
           "date": time.strftime("%Y-%m-%d")}
    # The workload's own rate (synthetic: workload.rate; traces: as recorded), scaled.
    rate = setup.base_rate * (_g(cfg, "workload.rate_scale") or 1.0)
    lats = {}
    sweeps = [s for s in str(_g(cfg, "sweep.kinds", "") or "").replace(" ", "").split(",") if s]
    for s in sweeps:
        if s not in SWEEPS:
            raise ValueError(f"sweep.kinds must be a comma-separated subset of {SWEEPS}, got {s!r}")
    if _g(cfg, "sweep.main_table", True):
        for i, name in enumerate(names):
            log.info("[%d/%d] policy %s ...", i + 1, len(names), name)
            m, lat, _ = run_policy(setup, name, rate=rate, keep_latencies=True)
            out["policies"][name] = m
            lats[name] = lat
            _progress(name, m)
    prompts = [q.strip() for q in str(_g(cfg, "samples.prompts", "") or "").split("|")
               if q.strip()]
    if prompts and setup.runner == "jax" and _checkpoint(cfg):
        out["samples"] = chat_samples(setup, prompts, _g(cfg, "samples.max_tokens", 48))
    if "rate" in sweeps:
        rates = _floats(_g(cfg, "sweep.rates"), "sweep.rates")
        out["rate_sweep"] = {n: [] for n in names}
        for n in names:
            for r in rates:
                m = run_policy(setup, n, rate=r, label=f"{n}@{r}")
                out["rate_sweep"][n].append(m)
                _progress(f"{n} @ {r:g} req/s", m)
    if "budget" in sweeps:
        budgets = [int(b) for b in _floats(_g(cfg, "sweep.budgets"), "sweep.budgets")]
        bpol = [p.strip() for p in str(_g(cfg, "sweep.budget_policies", "chunked")).split(",")]
        out["budget_sweep"] = {n: [] for n in bpol}
        for n in bpol:
            for b in budgets:
                m = run_policy(setup, n, rate=rate, max_num_batched_tokens=b)
                m["max_num_batched_tokens"] = b
                out["budget_sweep"][n].append(m)
                _progress(f"{n} budget {b}", m)
    if "capacity" in sweeps:
        lo, hi = _floats(_g(cfg, "sweep.capacity_range"), "sweep.capacity_range")
        out["capacity"] = {n: capacity_search(setup, n, lo, hi, _g(cfg, "sweep.capacity_iters", 6),
                                              slo_ttft, slo_tpot) for n in names}
    if "noise" in sweeps:
        errs = _floats(_g(cfg, "sweep.noise"), "sweep.noise")
        base_pol = _g(cfg, "sweep.noise_policy", "predictive")
        out["noise_sweep"] = []
        for e in errs:
            pol = f"{base_pol}+predictor=noisy_oracle:{e:g}:{_g(cfg, 'workload.seed', 0)}"
            m = run_policy(setup, pol, rate=rate)
            m["rel_error"] = e
            out["noise_sweep"].append(m)
            _progress(f"noisy_oracle {e:g}", m)
    if lats:
        out["_latencies"] = lats
    return out


def write_outputs(results: dict, workdir: str, figures: bool = True) -> dict:
    """results.json, table.md and PNG figures into workdir; returns {what: path}."""
    os.makedirs(workdir, exist_ok=True)
    paths = {}
    lats = results.pop("_latencies", None)
    if lats:    # the CDFs' data, so scripts/make_figures.py can redraw them from the JSON
        results["latency_quantiles"] = figures_lib.latency_quantiles(lats)
    if figures:
        paths.update(figures_lib.benchmark_figures(results, workdir, lats))
    results["figures"] = dict(paths)
    paths["results"] = report.write_json(os.path.join(workdir, "results.json"), results)
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write(format_results(results) + "\n")
    paths["table"] = os.path.join(workdir, "table.md")
    return paths


def format_results(results: dict) -> str:
    """Every table of a results dict, as markdown."""
    parts = []
    if results.get("mode") == "fidelity":
        return format_fidelity(results)
    if results.get("policies"):
        base = "static" if "static" in results["policies"] else None
        parts.append(report.table(results["policies"], baseline=base))
    for key, _title in (("rate_sweep", "rate"),):
        for n, ms in (results.get(key) or {}).items():
            rows = {f"{m['rate_rps']:.2f}": m for m in ms}
            parts.append(f"\n{n}: request-rate sweep\n" + report.table(rows, None, label="req/s"))
    for n, ms in (results.get("budget_sweep") or {}).items():
        rows = {str(m["max_num_batched_tokens"]): m for m in ms}
        parts.append(f"\n{n}: token-budget sweep\n" + report.table(rows, None, label="budget"))
    if results.get("noise_sweep"):
        rows = {f"{m['rel_error']:g}": m for m in results["noise_sweep"]}
        parts.append("\npredictive with noisy_oracle\n" + report.table(rows, "0", label="rel err"))
    if results.get("capacity"):
        lines = ["\n| policy | capacity (req/s) under SLOs |", "|---|---|"]
        lines += [f"| {n} | {c['capacity_rps']:.2f} |" for n, c in results["capacity"].items()]
        parts.append("\n".join(lines))
    if results.get("samples"):
        parts.append("\nThe model's greedy replies, through its chat template:")
        for smp in results["samples"]:
            parts.append(f"\n> {smp['prompt']}\n\n{smp['text'].strip()}\n"
                         f"({smp['num_tokens']} tokens, {smp['finish_reason']})")
    return "\n".join(parts)


# ---- simulator fidelity ------------------------------------------------------------------
def run_fidelity(config) -> dict:
    """Calibrate the cost model on the real JaxRunner's step times on one workload, then
    predict a different workload (its throughput and latencies) and compare with the real
    engine. The cost model counts the padded batches the JaxRunner executes (its buckets)."""
    from llmserve.runner.buckets import Buckets
    from llmserve.runner.sim_runner import SimRunner
    from llmserve.sim.cost_model import CostModel
    cfg = _cfg_dict(config)
    cfg["runner"] = "jax"
    setup = make_setup(cfg)
    e = cfg["engine"]
    policy = _policies(cfg)[0]
    ec = setup.engine_config(policy)
    buckets = Buckets(ec.max_num_batched_tokens, ec.max_num_seqs,
                      -(-ec.max_model_len // ec.block_size))
    padded = CostModel(setup.model_config, setup.hardware, block_size=e["block_size"],
                       buckets=buckets)

    class _Log:     # counts of every step, in order, for fit()
        def __init__(self):
            self.rows = []

        def counts(self, so):
            c = padded.counts(so)
            self.rows.append(c)
            return c

    # 1. calibration workload, real engine
    calib = _Log()
    setup.workload, setup.base_rate = load_workload(
        {**cfg, "workload": {**cfg["workload"], **cfg["fidelity"]["calibration_workload"]}},
        setup.model_config)
    log.info("fidelity: calibration run (%d requests) on the JAX engine", len(setup.workload))
    m_cal, _, res_cal = run_policy(setup, policy, keep_latencies=True, counter=calib)
    st = res_cal.steps
    # Host time between steps (scheduler, engine, replay) that the runner's own timing misses;
    # measured on the calibration run, added to the per-step overhead. The mean, not the
    # median: the simulated makespan adds these gaps up. (Gaps of 50 ms or more are the
    # replay idling until the next arrival, which the simulator reproduces by itself.)
    gaps = np.diff(st["start"]) - st["step_time"][:-1]
    busy_gaps = gaps[(gaps >= 0) & (gaps < 0.05)]
    host_s = float(np.mean(busy_gaps)) if busy_gaps.size else 0.0
    fitted, fit_report = padded.fit(calib.rows, st["step_time"])
    eff = dataclasses.replace(fitted.efficiency,
                              step_overhead_s=fitted.efficiency.step_overhead_s + host_s)
    fitted = fitted.with_efficiency(eff)
    fit_report["host_overhead_s"] = host_s
    log.info("fit: %s", fit_report)
    # 2. evaluation workload: real engine vs simulator
    setup.workload, setup.base_rate = load_workload(
        {**cfg, "workload": {**cfg["workload"], **cfg["fidelity"]["eval_workload"]}},
        setup.model_config)
    log.info("fidelity: evaluation run (%d requests), real engine", len(setup.workload))
    evlog = _Log()
    m_real, lat_real, res_real = run_policy(setup, policy, keep_latencies=True, counter=evlog)
    # The fitted model over the evaluation run's own steps, against their measured times: an
    # error here is the step-time model's (shapes outside the calibration, or the machine
    # running faster or slower than during calibration: a shared CPU), not the simulation's.
    ev_pred = sum(fitted.time_from_counts(c) for c in evlog.rows) - host_s * len(evlog.rows)
    fit_report["eval_steps_pred_over_measured"] = float(
        ev_pred / max(res_real.steps["step_time"].sum(), 1e-12))
    sim_setup = dataclasses.replace(setup, runner="sim", cost_model=fitted)

    def make_sim(ec, _s=sim_setup):
        from llmserve.engine import LLMEngine
        return LLMEngine(ec, runner=SimRunner(fitted), model=(setup.model_config, None, None),
                         clock=VirtualClock())
    sim_setup.make_engine = make_sim
    log.info("fidelity: evaluation run, simulator")
    m_sim, lat_sim, _ = run_policy(sim_setup, policy, keep_latencies=True)
    keys = ("output_throughput_tok_s", "request_throughput", "e2e_mean_s", "e2e_p99_s",
            "ttft_mean_s", "ttft_p99_s", "tpot_mean_s", "tpot_p99_s", "makespan_s")
    err = {k: (m_sim[k] - m_real[k]) / m_real[k] if m_real[k] else None for k in keys}
    return {"mode": "fidelity", "config": cfg, "policy": policy, "fit": fit_report,
                "calibration": m_cal, "real": m_real, "sim": m_sim, "relative_error": err,
                "hardware": setup.hardware.name, "runner": "jax+sim",
                "_latencies": {"real": lat_real, "sim": lat_sim}, "date": time.strftime("%Y-%m-%d")}


def format_fidelity(r: dict) -> str:
    lines = [(f"fit on {r['fit']['num_steps']} steps: mean |rel err| per step "
             f"{r['fit']['mean_abs_rel_error']:.1%}, total-time scale "
             f"{r['fit'].get('total_time_scale', 1.0):.3f}, host overhead "
             f"{1e3 * r['fit']['host_overhead_s']:.2f} ms/step; the fitted model over the "
             f"evaluation run's own steps predicts "
             f"{r['fit'].get('eval_steps_pred_over_measured', float('nan')):.3f}x their "
             f"measured time"),
             "| metric | real engine | simulator | error |", "|---|---|---|---|"]
    for k, e in r["relative_error"].items():
        lines.append(f"| {k} | {r['real'][k]:.4g} | {r['sim'][k]:.4g} | "
                     f"{'-' if e is None else f'{e:+.1%}'} |")
    return "\n".join(lines)
