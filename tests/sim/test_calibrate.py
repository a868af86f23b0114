"""GPU calibration (sim/calibrate.py): the fits recover factors that generated synthetic step
times, held-out points never move a fit, fitted profiles load by name, and the calibration
sweep's smoke run writes the JSON the fit reads."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from llmserve.model.config import get_preset
from llmserve.sim import calibrate as C
from llmserve.sim.cost_model import CostModel, Efficiency
from llmserve.sim.hardware import get_hardware

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRUE = Efficiency(linear_compute=0.62, linear_memory=0.55, attn_compute=0.41, attn_memory=0.83,
                  step_overhead_s=1.3e-3, per_seq_overhead_s=4e-6)
SHAPES = [(b, c, q) for b in (1, 16, 64, 256) for c in (512, 2048, 8192) for q in (0, 512)] + [
    (1, 2048, 2048), (8, 8192, 2048), (32, 4096, 1024)]


def _cm(eff=None):
    return CostModel(get_preset("llama3-8b"), get_hardware("h200"), eff)


def _step_points(eff, shapes=SHAPES, source="s"):
    cm = _cm(eff)
    return [C.Point(source, "step", "pallas", "llama3-8b", b, c, q,
                    cm.time_from_counts(cm.counts_from_sums(*C.step_sums(b, c, q))))
            for b, c, q in shapes]


def test_step_sums_match_the_cost_models_own_count_of_the_same_step():
    cm = _cm()
    for b, c, q in [(1, 10, 0), (3, 10, 4), (64, 2048, 512), (2, 40, 40)]:
        so = C.sweep_output(b, c, q, 16, 0)
        assert cm.counts(so) == cm.counts_from_sums(*C.step_sums(b, c, q)), (b, c, q)
    # by hand: 2 decodes at 10 + a 4-token chunk ending at 10: pairs 20 + (40 - 6)
    assert C.step_sums(3, 10, 4) == (6, 3, 54, 30, 3)


def test_fit_sweep_recovers_known_factors():
    eff, rep = C.fit_sweep(_step_points(TRUE), "h200")
    for k, v in dataclasses.asdict(TRUE).items():
        assert getattr(eff, k) == pytest.approx(v, rel=0.03), k
    assert rep["step_train"]["max_abs_rel_error"] < 1e-3


def test_held_out_points_do_not_enter_the_fit():
    pts = _step_points(TRUE)
    hold = C.every_third(pts)
    held = [p for p in pts if hold(p)]
    assert 0 < len(held) < len(pts)
    eff_a, rep_a = C.fit_sweep(pts, "h200", hold)
    # Corrupt every held-out time: the factors must not move, the held-out error must.
    bad = [dataclasses.replace(p, seconds=p.seconds * 3) if hold(p) else p for p in pts]
    held_bad = {dataclasses.replace(p, seconds=p.seconds * 3) for p in held}
    eff_b, rep_b = C.fit_sweep(bad, "h200", lambda p: p in held_bad)
    assert dataclasses.astuple(eff_a) == pytest.approx(dataclasses.astuple(eff_b), rel=1e-9)
    assert rep_a["step_held_out"]["n"] == len(held)
    assert rep_a["step_held_out"]["mean_abs_rel_error"] < 1e-3
    assert rep_b["step_held_out"]["mean_abs_rel_error"] == pytest.approx(2 / 3, rel=1e-3)
    assert rep_b["step_train"] == pytest.approx(rep_a["step_train"], rel=1e-6)


def test_fit_recorded_recovers_attention_and_step_factors():
    """Kernel timings = c + one layer's attention at e_am; steps at e_lm and the overhead."""
    truth = dataclasses.replace(Efficiency(), linear_memory=0.47, attn_memory=0.91,
                                step_overhead_s=1.7e-3)
    cm = _cm(truth)
    L = cm.model.num_layers
    hw = cm.hardware
    c_call = 45e-6
    pts = []
    for b, c in [(1, 512), (8, 512), (64, 512), (256, 512), (1, 2048), (64, 2048), (256, 2048),
                 (64, 8192), (256, 8192)]:
        ab = cm.counts_from_sums(*C.step_sums(b, c, 0))[3]
        pts.append(C.Point("run", "attention", "pallas", "llama3-8b", b, c, 0,
                           c_call + ab / (hw.mem_bandwidth * truth.attn_memory) / L))
    for model in ("llama3-8b", "tiny"):
        m = CostModel(get_preset(model).replace(dtype="bfloat16"), hw, truth)
        pts.append(C.Point("run", "step", "pallas", model, 64, 1024, 0,
                           m.time_from_counts(m.counts_from_sums(*C.step_sums(64, 1024, 0)))))
    eff, rep = C.fit_recorded(pts, "h200", holdout=lambda p: p.context == 8192)
    assert eff.attn_memory == pytest.approx(0.91, rel=1e-3)
    assert eff.linear_memory == pytest.approx(0.47, rel=1e-3)
    assert eff.step_overhead_s == pytest.approx(1.7e-3, rel=1e-3)
    assert rep["attention_fits"]["run/pallas"]["per_call_s"] == pytest.approx(c_call, rel=1e-3)
    assert rep["attention_held_out"]["n"] == 2
    assert rep["attention_held_out"]["max_abs_rel_error"] < 1e-6
    assert rep["kept_default"] == ["linear_compute", "attn_compute", "per_seq_overhead_s"]


def test_recorded_runs_load_and_their_holdout_keeps_only_the_newest_pallas_steps():
    paths = [os.path.join(ROOT, "pallas_kernels", "gpu_runs",
                          f"2026-11-28_h200_run{i}_results.json") for i in (1, 2, 3)]
    pts = [p for path in paths for p in C.load_points(path)]
    steps = [p for p in pts if p.kind == "step"]
    assert len(steps) == 12 and {p.impl for p in steps} == {"pallas", "reference"}
    assert all(p.seconds > 0 for p in pts)
    hold = C.recorded_holdout(pts)
    train = [p for p in steps if not hold(p)]
    assert {(p.source, p.impl) for p in train} == {("2026-11-28_h200_run3_results", "pallas")}
    assert not any(p.context == 8192 and not hold(p) for p in pts if p.kind == "attention")


def test_saved_profile_loads_by_name_and_the_cost_model_uses_it(tmp_path, monkeypatch):
    from llmserve.sim import hardware
    monkeypatch.setattr(hardware, "PROFILE_DIR", str(tmp_path))
    C.save_profile("h200-test", "h200", TRUE, {"method": "x"}, ["a.json"], str(tmp_path))
    hw = get_hardware("h200-test")
    base = get_hardware("h200")
    assert (hw.peak_flops, hw.mem_bandwidth, hw.memory_bytes) == \
        (base.peak_flops, base.mem_bandwidth, base.memory_bytes)
    assert CostModel(get_preset("llama3-8b"), hw).efficiency == TRUE
    assert CostModel(get_preset("llama3-8b"), base).efficiency == Efficiency()
    # bench: a config override wins over the profile's factor, the rest stay fitted
    from llmserve.bench import _efficiency
    eff = _efficiency({"cost_model": {"efficiency": {"linear_memory": 0.9}}}, hw)
    assert eff == dataclasses.replace(TRUE, linear_memory=0.9)
    with pytest.raises(ValueError, match="h200-test"):
        get_hardware("nope")
    with pytest.raises(ValueError, match="not finite"):
        C.save_profile("h200-bad", "h200", dataclasses.replace(TRUE, linear_memory=np.inf),
                       {}, [], str(tmp_path))


def test_committed_h200_fit_profile_is_usable():
    hw = get_hardware("h200-fit")
    eff = CostModel(get_preset("llama3-8b"), hw).efficiency
    assert eff != Efficiency() and 0 < eff.linear_memory <= 1 and 0 < eff.attn_memory <= 1


@pytest.mark.slow
def test_sweep_smoke_run_writes_the_json_the_fit_reads(tmp_path):
    """Through scripts/gpu_check.sh as a GPU run calls it (kernel stages skipped by budget,
    the calibration sweep's CPU profile)."""
    env = {**os.environ, "OUT": str(tmp_path), "KERNEL_BUDGET_S": "0", "TOTAL_BUDGET_S": "0",
           "CALIB_PROFILE": "smoke", "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu"}
    subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=900)
    with open(tmp_path / "run.json") as f:
        rcs = {r["stage"]: r["rc"] for r in json.load(f)["stage_rc"]}
    assert rcs["calib_sweep"] == 0
    out = tmp_path / "calib_sweep.json"
    data = json.loads(out.read_text())
    assert data["kind"] == "calib_sweep" and len(data["rows"]) == 9
    assert all(r.get("step_s", 0) > 0 for r in data["rows"])
    eff, rep = C.fit_files([str(out)], "h200")
    assert rep["method"].startswith("sweep")
    assert rep["step_train"]["n"] == 6 and rep["step_held_out"]["n"] == 3
    assert all(np.isfinite(v) for v in dataclasses.astuple(eff))
