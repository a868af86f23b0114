"""llmserve.bench: results schema, identical request streams, sweeps, outputs."""
import json
import os

import pytest

from llmserve import bench
from llmserve.core.scheduler import PRESETS

SCHEMA = ("num_requests", "num_finished", "makespan_s", "output_throughput_tok_s",
          "request_throughput", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s",
          "e2e_p50_s", "e2e_p99_s", "goodput_rps", "padding_waste", "kv_fragmentation",
          "preemptions", "prefix_hit_rate", "scheduler_us_per_step", "busy_fraction")


def _config(**over):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "bc", os.path.join(os.path.dirname(__file__), "..", "configs", "benchmark.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.runner = "sim"
    c.model.preset = "tiny"     # the default is the real SmolLM2: the sim needs only shapes
    c.workload.num_requests = 40
    c.workload.rate = 20.0
    c.engine.warmup = False
    for k, v in over.items():
        node = c
        *path, leaf = k.split(".")
        for p in path:
            node = node[p]
        node[leaf] = v
    return c


def test_sim_run_schema_and_same_stream(tmp_path):
    cfg = _config(policies=",".join(PRESETS))
    res = bench.run(cfg)
    assert set(res["policies"]) == set(PRESETS)
    total_out = None
    for name, m in res["policies"].items():
        for k in SCHEMA:
            assert k in m, (name, k)
        assert m["num_finished"] == m["num_requests"] == 40
        out_tokens = m["output_throughput_tok_s"] * m["makespan_s"]
        total_out = total_out or out_tokens
        assert out_tokens == pytest.approx(total_out)     # the identical request stream
    # only static batching pads; its throughput ratio is what the table reports
    assert res["policies"]["static"]["padding_waste"] > 0
    assert res["policies"]["chunked"]["padding_waste"] == 0
    paths = bench.write_outputs(res, str(tmp_path))
    with open(paths["results"]) as f:
        data = json.load(f)
    assert set(data) >= {"config", "policies"} and data["config"]["runner"] == "sim"
    assert os.path.isfile(paths["latency_cdf"])
    table = bench.format_results(data)
    assert "x static" in table and all(f"| {p} |" in table for p in PRESETS)


def test_sweeps_and_capacity():
    cfg = _config(policies="chunked", **{"sweep.main_table": False,
                                         "sweep.kinds": "rate,budget,capacity,noise",
                                         "sweep.rates": "5,80", "sweep.budgets": "256,512",
                                         "sweep.noise": "0,0.5", "sweep.capacity_iters": 3,
                                         "sweep.capacity_range": "1,400"})
    res = bench.run(cfg)
    low, high = res["rate_sweep"]["chunked"]
    assert low["rate_rps"] == 5 and high["rate_rps"] == 80
    assert high["ttft_p99_s"] >= low["ttft_p99_s"]
    assert [m["max_num_batched_tokens"] for m in res["budget_sweep"]["chunked"]] == [256, 512]
    assert [m["rel_error"] for m in res["noise_sweep"]] == [0.0, 0.5]
    cap = res["capacity"]["chunked"]
    oks = [p for p in cap["probes"] if p["ok"]]
    bad = [p for p in cap["probes"] if not p["ok"]]
    # capacity = the best rate that met the SLOs, below every rate that did not
    assert cap["capacity_rps"] == max(p["rate_rps"] for p in oks)
    assert all(p["rate_rps"] > cap["capacity_rps"] for p in bad)


def test_parse_policy_and_bad_config():
    assert bench.parse_policy("static+queue_policy=length_bins+static_batch_size=8") == \
        ("static", {"queue_policy": "length_bins", "static_batch_size": 8})
    with pytest.raises(ValueError, match="name=value"):
        bench.parse_policy("chunked+oops")
    with pytest.raises(ValueError, match="runner"):
        bench.run(_config(runner="tpu"))
    with pytest.raises(ValueError, match="policy"):
        bench.run(_config(policies="fastest"))
    with pytest.raises(ValueError, match="sweep.kinds"):
        bench.run(_config(**{"sweep.kinds": "everything"}))


def test_jax_runner_small():
    cfg = _config(runner="jax", policies="chunked", **{"workload.num_requests": 4,
                                                       "workload.rate": 50.0})
    m = bench.run(cfg)["policies"]["chunked"]
    assert m["num_finished"] == 4
    assert m["ttft_p50_s"] > 0 and m["output_throughput_tok_s"] > 0
    assert 0 < m["mfu"] < 1
