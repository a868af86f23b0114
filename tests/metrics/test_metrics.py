"""Summary metrics on hand-built records (values computed by hand / numpy); report outputs."""
import json
import math

import numpy as np
import pytest

from llmserve.metrics import report
from llmserve.metrics.summary import summarize
from llmserve.sim.hardware import HardwareProfile
from llmserve.workload.replay import ReplayResult


def _result():
    # three requests: (arrival, first_token, finish, prompt, output, cached)
    rows = np.array([(0.0, 0.5, 2.5, 10, 5, 0),      # TTFT .5, TPOT .5
                     (1.0, 1.2, 1.2, 20, 1, 16),     # TTFT .2, no TPOT
                     (2.0, 5.0, 9.0, 30, 3, 0)])     # TTFT 3,  TPOT 2
    req = {"arrival": rows[:, 0], "first_scheduled": rows[:, 0], "first_token": rows[:, 1],
           "finish": rows[:, 2], "prompt_len": rows[:, 3], "output_len": rows[:, 4],
           "preemptions": np.zeros(3), "cached_tokens": rows[:, 5],
           "itl": np.array([0.5, 0.5, 0.5, 0.5, 2.0, 2.0])}
    steps = {"start": np.arange(4.0), "step_time": np.array([1.0, 1.0, 2.0, 0.5]),
             "tokens": np.array([30, 4, 3, 3.0]), "padding": np.array([0, 2, 1, 1.0]),
             "seqs": np.array([2, 3, 3, 3.0]), "kv_used_blocks": np.array([2, 4, 6, 8.0]),
             "waiting": np.zeros(4), "flops": np.full(4, 1e9), "bytes": np.full(4, 2e9),
             "kv_reserved_slots": np.array([32, 64, 0.0]), "kv_used_slots": np.array([24, 16, 0])}
    return ReplayResult(req, steps, start=0.0, end=9.0, num_requests=4, num_rejected=1,
                        num_aborted=0, num_truncated=0, virtual=True, wall_s=2.0,
                        scheduler_ns=4000, scheduler_steps=4, preemptions=1)


def test_summary_by_hand():
    m = summarize(_result(), slo_ttft_s=1.0, slo_tpot_s=1.0, num_kv_blocks=10,
                  hardware=HardwareProfile("x", 1e9, 1e9, 1))
    assert m["makespan_s"] == 9.0 and m["num_finished"] == 3 and m["num_requests"] == 4
    assert m["output_throughput_tok_s"] == pytest.approx(9 / 9)
    assert m["total_throughput_tok_s"] == pytest.approx(69 / 9)
    assert m["request_throughput"] == pytest.approx(3 / 9)
    assert m["ttft_mean_s"] == pytest.approx((0.5 + 0.2 + 3.0) / 3)
    assert m["ttft_p50_s"] == pytest.approx(0.5)
    assert m["ttft_p99_s"] == pytest.approx(np.percentile([0.5, 0.2, 3.0], 99))
    assert m["tpot_mean_s"] == pytest.approx(1.25)       # one-token request has no TPOT
    assert m["e2e_p50_s"] == pytest.approx(2.5)
    assert m["itl_mean_s"] == pytest.approx(1.0)
    # requests 0 and 1 meet both SLOs (1 has no TPOT), request 2 misses both
    assert m["goodput_rps"] == pytest.approx(2 / 9)
    assert m["slo_attainment"] == pytest.approx(2 / 4)
    assert m["padding_waste"] == pytest.approx(4 / 44)
    assert m["kv_fragmentation"] == pytest.approx((8 / 32 + 48 / 64) / 2)
    assert m["kv_utilization_mean"] == pytest.approx(0.5)
    assert m["kv_utilization_peak"] == pytest.approx(0.8)
    assert m["prefix_hit_rate"] == pytest.approx(16 / 60)
    assert m["busy_fraction"] == pytest.approx(4.5 / 9)
    assert m["mfu"] == pytest.approx(4e9 / 9e9) and m["mbu"] == pytest.approx(8e9 / 9e9)
    assert m["scheduler_us_per_step"] == pytest.approx(1.0)
    assert m["simulated_requests_per_wall_s"] == pytest.approx(2.0)
    assert m["preemptions"] == 1


def test_table_json_and_figures(tmp_path):
    rows = {"static": {"output_throughput_tok_s": 100.0, "ttft_p99_s": float("nan"),
                       "preemptions": 3},
            "chunked": {"output_throughput_tok_s": 250.0, "ttft_p99_s": 0.1234, "preemptions": 0}}
    t = report.table(rows, baseline="static")
    lines = t.splitlines()
    assert "x static" in lines[0]
    assert lines[3].startswith("| chunked | 250.0 | 2.50 |")
    assert "| 123 |" in lines[3] and "| - |" in lines[2]
    p = report.write_json(str(tmp_path / "r.json"), {"a": np.float64("nan"), "b": np.int64(3),
                                                      "c": np.arange(2)})
    with open(p) as f:
        assert json.load(f) == {"a": None, "b": 3, "c": [0, 1]}
    lat = {"x": {k: np.array([0.1, 0.2, math.nan]) for k in ("ttft", "tpot", "e2e")}}
    f1 = report.plot_latency_cdfs(lat, str(tmp_path / "cdf.png"))
    f2 = report.plot_sweep({"x": [(1, rows["chunked"]), (2, rows["static"])]},
                           str(tmp_path / "s.png"), "rate", 1.0, 0.1)
    for f in (f1, f2):
        with open(f, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
