"""Fit the cost model's efficiency factors to step times measured on a GPU.

Two kinds of measurement exist (both JSON, read by `load_points`):

- A GPU check's `results.json` (scripts/gpu_check.sh, the recorded H200 runs in
  pallas_kernels/gpu_runs/): whole engine decode steps of the JaxRunner at one shape per model
  (`engine.rows`) and one layer's attention kernel alone at many shapes (`decode` stage: the
  Pallas kernel and the XLA reference; `ragged` stage: a mixed batch). Too few step shapes to
  fit six factors, so `fit_recorded` fits in two stages: each (run, implementation)'s attention
  memory efficiency from its kernel timings (plus the microbenchmark's fixed cost per call,
  which a jitted step does not pay), then the step overhead and the weight-streaming
  efficiency from whole steps with that attention term held fixed. Factors no recorded point
  is sensitive to (compute efficiencies: every recorded step is memory bound; the per-sequence
  overhead: one batch size) keep their defaults, and the report says so.
- A calibration sweep (scripts/calib_sweep.py, run by gpu_check.sh): whole steps of the real
  runner over batch, context and chunk size; `fit_sweep` fits all six factors with
  CostModel.fit.

Every fit holds points out (`holdout`: a predicate on a point) and reports the relative
error on the training and the held-out points separately; held-out points never enter a fit.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from llmserve.model.config import get_preset
from llmserve.sim.cost_model import FACTORS, CostModel, Efficiency
from llmserve.sim.hardware import get_hardware

PROFILE_DIR = os.path.join(os.path.dirname(__file__), "profiles")


@dataclasses.dataclass(frozen=True)
class Point:
    source: str         # which run measured it (file stem)
    kind: str           # "step": a whole engine step | "attention": one layer's kernel call
    impl: str           # attention implementation: pallas | reference
    model: str          # model preset
    batch: int          # sequences
    context: int        # tokens of context per sequence, the new one included
    chunk: int          # 0: every row decodes; else sequence 0 prefills `chunk` tokens
    seconds: float

    @property
    def name(self) -> str:
        mix = f" chunk {self.chunk}" if self.chunk else ""
        return (f"{self.source} {self.kind} {self.model}/{self.impl} B={self.batch} "
                f"ctx={self.context}{mix}")


def step_sums(batch: int, context: int, chunk: int) -> tuple[int, int, int, int, int]:
    """(tokens, sampled rows, causal pairs, cached tokens read, sequences) of a step whose
    `batch` rows sit at `context` tokens; with chunk > 0 row 0 computes its last `chunk`
    tokens (a prefill chunk ending at `context`) and the others decode one."""
    q = max(chunk, 1)
    tokens = batch - 1 + q
    pairs = (batch - 1) * context + q * context - q * (q - 1) // 2
    return tokens, batch, pairs, batch * context, batch


def load_points(path: str) -> list[Point]:
    """The measured points of one JSON file: a GPU check's results.json, an engine JSON
    (scripts/engine_gpu_bench.py) or a calibration sweep (scripts/calib_sweep.py)."""
    with open(path) as f:
        data = json.load(f)
    source = os.path.splitext(os.path.basename(path))[0]
    if data.get("kind") == "calib_sweep":
        return [Point(source, "step", data["impl"], data["model"], r["batch"], r["context"],
                      r["chunk"], r["step_s"]) for r in data["rows"] if r.get("step_s")]
    stages = data.get("stages", {})
    engine = stages.get("engine", data if "rows" in data else {})
    pts = []
    for r in engine.get("rows", []):
        if "step_ms" in r:
            pts.append(Point(source, "step", r["impl"], r["model"], r["batch"], r["context"],
                             0, r["step_ms"] / 1e3))
        if r.get("mixed_step_ms"):
            pts.append(Point(source, "step", r["impl"], r["model"], r["batch"], r["context"],
                             r["mixed_chunk"], r["mixed_step_ms"] / 1e3))
    for it in stages.get("decode", {}).get("items", []):
        if "batch" not in it:
            continue
        for impl, key in (("pallas", "kernel"), ("reference", "reference")):
            t = (it.get(key) or {}).get("median_s")
            if t:
                pts.append(Point(source, "attention", impl, "llama3-8b", it["batch"], it["ctx"],
                                 0, t))
    for it in stages.get("ragged", {}).get("items", []):
        # The ragged stage's mixed batch (pallas_kernels/benchmark.py _ragged_problem): a
        # 512-token chunk ending at 2048 + 63 decodes at 2048, Llama-3-8B.
        if it.get("case", "").startswith("ragged 64 seqs, q_lens [512, 1]"):
            for impl, key in (("pallas", "kernel"), ("reference", "reference")):
                t = (it.get(key) or {}).get("median_s")
                if t:
                    pts.append(Point(source, "attention", impl, "llama3-8b", 64, 2048, 512, t))
    return pts


class _Terms:
    """A model's cost-model terms at a point, in seconds at 100% efficiency: linear compute,
    linear memory, attention compute, attention memory (whole step, all layers)."""

    def __init__(self, hardware):
        self.hw = get_hardware(hardware) if isinstance(hardware, str) else hardware
        self._cms = {}

    def cost_model(self, model: str) -> CostModel:
        if model not in self._cms:
            cfg = get_preset(model)
            if cfg.dtype == "float32":      # the GPU runs serve every model in bf16
                cfg = cfg.replace(dtype="bfloat16")
            self._cms[model] = CostModel(cfg, self.hw)
        return self._cms[model]

    def __call__(self, p: Point) -> np.ndarray:
        cm = self.cost_model(p.model)
        lf, lb, af, ab, nseq = cm.counts_from_sums(*step_sums(p.batch, p.context, p.chunk))
        return np.array([lf / self.hw.peak_flops, lb / self.hw.mem_bandwidth,
                         af / self.hw.peak_flops, ab / self.hw.mem_bandwidth, nseq])


def _rel_errors(pred, meas) -> dict:
    rel = np.abs(np.asarray(pred) / np.asarray(meas) - 1.0)
    if not rel.size:
        return {"n": 0, "mean_abs_rel_error": None, "max_abs_rel_error": None}
    return {"n": int(rel.size), "mean_abs_rel_error": float(rel.mean()),
            "max_abs_rel_error": float(rel.max())}


def _lsq(resid, x0):
    from scipy.optimize import least_squares
    return np.exp(least_squares(resid, np.log(x0), method="trf", bounds=(-40, 40)).x)


def fit_recorded(points: list[Point], hardware="h200", holdout=None,
                 base: Efficiency | None = None) -> tuple[Efficiency, dict]:
    """Two-stage fit on a GPU check's points (module doc). holdout(point) -> True keeps the
    point out of every fit; it is only predicted. The returned Efficiency carries the
    attention efficiency of the `pallas` kernel of the newest source with kernel timings
    (the engine's GPU path), the fitted step overhead and weight-streaming efficiency, and
    `base`'s (default) values for the rest."""
    base = base or Efficiency()
    holdout = holdout or (lambda p: False)
    terms = _Terms(hardware)
    L = {m: terms.cost_model(m).model.num_layers for m in {p.model for p in points}}
    # Stage 1: per (source, impl), one layer's attention: c + max(F/e_ac, B/e_am) / L.
    attn, attn_rows = {}, []
    for key in sorted({(p.source, p.impl) for p in points if p.kind == "attention"}):
        group = [p for p in points if p.kind == "attention" and (p.source, p.impl) == key]
        train = [p for p in group if not holdout(p) and not p.chunk]
        if len(train) < 2:
            continue
        T = np.array([terms(p) for p in train])
        t = np.array([p.seconds for p in train])
        Ls = np.array([L[p.model] for p in train])

        def pred_attn(x, T=T, Ls=Ls):
            return x[1] + np.maximum(T[:, 2] / base.attn_compute, T[:, 3] * x[0]) / Ls

        # Absolute errors (in units of the mean time): the large shapes, where attention is
        # a visible part of a step, set the efficiency; a 50 us call at batch 1 is mostly
        # the microbenchmark's dispatch, which `c` takes.
        x = _lsq(lambda lx, f=pred_attn, t=t: (f(np.exp(lx)) - t) / t.mean(),
                 np.array([1.0, float(t.min()) / 2]))
        attn[key] = x
        for p in group:
            tp = terms(p)
            pr = x[1] + max(tp[2] / base.attn_compute, tp[3] * x[0]) / L[p.model]
            attn_rows.append({"point": p.name, "measured_s": p.seconds, "predicted_s": pr,
                              "held_out": bool(holdout(p) or p.chunk), "mixed": bool(p.chunk)})
    # Stage 2: whole steps, attention term from stage 1 (no per-call c: a jitted step
    # launches its kernels back to back, and the step overhead holds what they cost).
    steps = [p for p in points if p.kind == "step" and (p.source, p.impl) in attn]
    newest = max((k for k in attn if k[1] == "pallas"), default=None)

    def step_pred(x, p):
        tp = terms(p)
        inv_am = attn[(p.source, p.impl)][0]
        return (x[0] + base.per_seq_overhead_s * tp[4]
                + max(tp[0] / base.linear_compute, tp[1] * x[1])
                + max(tp[2] / base.attn_compute, tp[3] * inv_am))

    train = [p for p in steps if not holdout(p)]
    if not train:
        raise ValueError("fit_recorded: no whole-step point left for training (each needs "
                         "kernel timings of its run and implementation)")
    t = np.array([p.seconds for p in train])
    x = _lsq(lambda lx: np.array([step_pred(np.exp(lx), p) for p in train]) / t - 1.0,
             np.array([base.step_overhead_s, 1 / base.linear_memory]))
    eff = dataclasses.replace(base, step_overhead_s=float(x[0]), linear_memory=float(1 / x[1]),
                              attn_memory=float(1 / attn[newest][0]) if newest else
                              base.attn_memory)
    step_rows = [{"point": p.name, "measured_s": p.seconds, "predicted_s": step_pred(x, p),
                  "held_out": bool(holdout(p))} for p in steps]

    def split(rows, held):
        sel = [r for r in rows if r["held_out"] == held and not r.get("mixed")]
        return _rel_errors([r["predicted_s"] for r in sel], [r["measured_s"] for r in sel])

    report = {
        "method": "recorded two-stage", "hardware": terms.hw.name,
        "efficiency": dataclasses.asdict(eff),
        "fitted": ["attn_memory", "step_overhead_s", "linear_memory"],
        "kept_default": ["linear_compute", "attn_compute", "per_seq_overhead_s"],
        "attention_fits": {f"{s}/{i}": {"attn_memory": 1 / v[0], "per_call_s": v[1]}
                           for (s, i), v in attn.items()},
        "attention_train": split(attn_rows, False), "attention_held_out": split(attn_rows, True),
        "attention_mixed": [r for r in attn_rows if r["mixed"]],
        "step_train": split(step_rows, False), "step_held_out": split(step_rows, True),
        "attention_points": attn_rows, "step_points": step_rows,
    }
    return eff, report


def fit_sweep(points: list[Point], hardware="h200", holdout=None,
              base: Efficiency | None = None) -> tuple[Efficiency, dict]:
    """All six factors from whole-step points (a calibration sweep) by CostModel.fit; the
    held-out points are predicted by the fitted model only."""
    base = base or Efficiency()
    holdout = holdout or (lambda p: False)
    terms = _Terms(hardware)
    steps = [p for p in points if p.kind == "step"]
    models = {p.model for p in steps}
    if len(models) != 1:
        raise ValueError(f"fit_sweep: the steps must be of one model, got {sorted(models)}")
    cm = terms.cost_model(models.pop()).with_efficiency(base)
    train = [p for p in steps if not holdout(p)]
    if len(train) < len(FACTORS):
        raise ValueError(f"fit_sweep needs >= {len(FACTORS)} training steps, got {len(train)}")

    def counts(p):
        return cm.counts_from_sums(*step_sums(p.batch, p.context, p.chunk))

    fitted, rep = cm.fit([counts(p) for p in train], [p.seconds for p in train],
                         match_total=False)
    rows = [{"point": p.name, "measured_s": p.seconds,
             "predicted_s": fitted.time_from_counts(counts(p)), "held_out": bool(holdout(p))}
            for p in steps]
    pick = (lambda held: _rel_errors([r["predicted_s"] for r in rows if r["held_out"] == held],
                                     [r["measured_s"] for r in rows if r["held_out"] == held]))
    report = {"method": "sweep (CostModel.fit)", "hardware": terms.hw.name,
              "efficiency": rep["efficiency"], "fitted": list(FACTORS), "kept_default": [],
              "step_train": pick(False), "step_held_out": pick(True), "step_points": rows}
    return fitted.efficiency, report


def every_third(points: list[Point]):
    """A holdout predicate: every third point of each (source, kind, impl) group in file
    order, so each group keeps two thirds for training."""
    held = set()
    groups: dict = {}
    for p in points:
        groups.setdefault((p.source, p.kind, p.impl), []).append(p)
    for g in groups.values():
        held.update(g[2::3])
    return lambda p: p in held


def save_profile(name: str, base_hardware: str, eff: Efficiency, report: dict,
                 sources: list[str], directory: str = PROFILE_DIR) -> str:
    """Write a named hardware profile (the base hardware + fitted factors) that
    sim/hardware.get_hardware(name) finds. Returns the path."""
    if not name or any(c in name for c in "/\\ ") or name != name.lower():
        raise ValueError(f"profile name must be a lower-case word without spaces or slashes, "
                         f"got {name!r}")
    for k, v in dataclasses.asdict(eff).items():
        if not math.isfinite(v):
            raise ValueError(f"fitted {k} is not finite ({v}); not saving profile {name!r}")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.json")
    keep = {k: v for k, v in report.items() if not k.endswith("_points")}
    with open(path, "w") as f:
        json.dump({"name": name, "base": base_hardware, "efficiency": dataclasses.asdict(eff),
                   "sources": sources, "fit": keep}, f, indent=1)
        f.write("\n")
    return path


def recorded_holdout(points: list[Point]):
    """The recorded runs' holdout: attention kernel timings at the longest context (the
    fit extrapolates to it) and every whole step except the newest run's Pallas steps (the
    engine's GPU path as it is now): older runs (the first kernel version, whose attention
    efficiency comes from their own kernel timings) and the XLA reference path."""
    longest = max((p.context for p in points if p.kind == "attention"), default=0)
    newest = max((p.source for p in points if p.kind == "step" and p.impl == "pallas"),
                 default=None)
    return lambda p: ((p.kind == "attention" and p.context == longest)
                      or (p.kind == "step" and (p.source, p.impl) != (newest, "pallas")))


def fit_files(paths: list[str], hardware: str = "h200", holdout: str = "auto"):
    """Points of every file, then fit_sweep when any is a calibration sweep (its steps
    only), else fit_recorded. holdout: auto (every third sweep step / recorded_holdout) or
    none. Returns (Efficiency, report)."""
    points = [p for path in paths for p in load_points(path)]
    if not points:
        raise ValueError(f"fit: no measured points in {paths}")
    sweep = {os.path.splitext(os.path.basename(p))[0] for p in paths
             if _is_sweep(p)}
    if holdout not in ("auto", "none"):
        raise ValueError(f"holdout must be 'auto' or 'none', got {holdout!r}")
    if sweep:
        pts = [p for p in points if p.source in sweep]
        hold = every_third(pts) if holdout == "auto" else None
        return fit_sweep(pts, hardware, hold)
    hold = recorded_holdout(points) if holdout == "auto" else None
    return fit_recorded(points, hardware, hold)


def _is_sweep(path: str) -> bool:
    with open(path) as f:
        return json.load(f).get("kind") == "calib_sweep"


def format_report(report: dict) -> str:
    """The fit's factors and its train / held-out errors, as markdown."""
    e = report["efficiency"]
    lines = [f"fit: {report['method']} on {report['hardware']}; fitted "
             f"{', '.join(report['fitted'])}; defaults kept: "
             f"{', '.join(report['kept_default']) or 'none'}", "",
             "| factor | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in e.items()]
    lines += ["", "| points | n | mean abs rel err | max abs rel err |", "|---|---|---|---|"]
    for k in ("attention_train", "attention_held_out", "step_train", "step_held_out"):
        r = report.get(k)
        if r and r["n"]:
            lines.append(f"| {k.replace('_', ' ')} | {r['n']} | {r['mean_abs_rel_error']:.1%} "
                         f"| {r['max_abs_rel_error']:.1%} |")
    rows = report.get("step_points", []) + report.get("attention_mixed", [])
    if rows:
        lines += ["", "| point | measured ms | predicted ms | error | held out |",
                  "|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['point']} | {1e3 * r['measured_s']:.3f} | "
                         f"{1e3 * r['predicted_s']:.3f} | "
                         f"{r['predicted_s'] / r['measured_s'] - 1:+.1%} | "
                         f"{'yes' if r['held_out'] else 'no'} |")
    return "\n".join(lines)


def sweep_output(batch: int, context: int, chunk: int, block_size: int, step: int):
    """A SchedulerOutput of the shape step_sums counts: `batch` rows at `context` tokens
    (block tables of their own), row 0 computing a `chunk`-token prefill chunk ending at
    `context` when chunk > 0 (the calibration sweep's steps)."""
    from llmserve.core.sched_output import ScheduledRequest, SchedulerOutput
    per_seq = -(-(context + 1) // block_size)
    rows = []
    for i in range(batch):
        q = chunk if (i == 0 and chunk) else 1
        ids = [(7 * k + i) % 200 + 1 for k in range(q)]
        rows.append(ScheduledRequest(str(i), ids, context - q,
                                     list(range(i * per_seq, (i + 1) * per_seq)), True, step,
                                     (0.0, -1, 1.0, i)))
    return SchedulerOutput(step, rows, batch - 1 + max(chunk, 1))
