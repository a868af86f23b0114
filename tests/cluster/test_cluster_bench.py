"""The cluster benchmark's plumbing on a tiny config, and the workloads it adds."""
import json
import os

import numpy as np
import pytest

from configs import cluster_bench as cb_config
from llmserve.cluster import bench
from llmserve.workload.synthetic import resampled_workload, shared_prefix_workload


def tiny(tmp_path, **over):
    c = cb_config.get_config()
    c.cluster.replicas = "h100-80gb:2"
    c.workload.kind = "synthetic"
    c.workload.num_requests = 60
    c.workload.rate_per_replica = 20.0
    c.policies = "least_tokens"
    c.decision_sweep = "0.02"
    for k, v in over.items():
        obj = c
        *path, last = k.split(".")
        for p in path:
            obj = obj[p]
        obj[last] = v
    return c


def test_compare_runs_every_policy_and_placement_and_writes_outputs(tmp_path):
    res = bench.run(tiny(tmp_path))
    assert list(res["rows"]) == ["least_tokens/centralized", "least_tokens/distributed"]
    for m in res["rows"].values():
        assert m["num_finished"] == 60
    # 20 ms per decision, 40 req/s offered: the single router is 80% busy, so requests wait;
    # four routers each see a quarter.
    sw = res["decision_sweep"]
    assert sw["least_tokens/centralized@20ms"]["router_wait_mean_s"] > \
        sw["least_tokens/distributed@20ms"]["router_wait_mean_s"]
    text = bench.format_results(res)
    assert "least_tokens/distributed" in text and "decision cost sweep" in text
    paths = bench.write_outputs(res, str(tmp_path), figures=True)
    with open(paths["json"]) as f:
        assert json.load(f)["rows"]["least_tokens/centralized"]["num_finished"] == 60
    assert os.path.getsize(paths["replica_load"]) > 0


def test_missing_azure_dataset_is_an_error_naming_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMSERVE_DATA", str(tmp_path / "empty"))
    c = tiny(tmp_path, **{"workload.kind": "azure_csv", "workload.path": "",
                          "workload.dataset": "azure_conv_2023", "workload.num_requests": 40})
    with pytest.raises(ValueError, match="azure_conv_2023.*fetch_data.py --config=configs/data.py"
                                         " --config.names=azure_conv_2023"):
        bench.load_workload(c.to_dict(), 2)
    c.workload.path = str(tmp_path / "nonexistent.csv")
    with pytest.raises(ValueError, match="nonexistent.csv"):
        bench.load_workload(c.to_dict(), 2)
    with pytest.raises(ValueError, match="workload.kind"):
        bench.load_workload(tiny(tmp_path, **{"workload.kind": "tweets"}).to_dict(), 2)


def test_shared_prefix_workload():
    w = shared_prefix_workload(300, 50.0, num_prefixes=3, prefix_len=40, question_len=(5, 9),
                               popularity_zipf=1.0, seed=1, vocab_size=500)
    heads = [tuple(r.prompt_token_ids[:40]) for r in w]
    counts = sorted((heads.count(h) for h in set(heads)), reverse=True)
    assert len(counts) == 3
    # Zipf 1 over 3: probabilities 6/11, 3/11, 2/11.
    np.testing.assert_allclose(np.array(counts) / 300, [6 / 11, 3 / 11, 2 / 11], atol=0.07)
    assert all(45 <= r.prompt_len <= 49 and r.prompt_len == len(r.prompt_token_ids)
               for r in w)
    with pytest.raises(ValueError, match="question_len"):
        shared_prefix_workload(5, 1.0, question_len=(9, 5))


def test_resampled_workload_keeps_length_pairs():
    src = shared_prefix_workload(50, 5.0, num_prefixes=2, prefix_len=8, seed=0, vocab_size=99)
    pairs = {(r.prompt_len, r.output_len) for r in src}
    w = resampled_workload(src, 400, 100.0, seed=2)
    assert len(w) == 400 and {(r.prompt_len, r.output_len) for r in w} <= pairs
    gaps = np.diff([r.arrival_s for r in w])
    assert abs(gaps.mean() - 0.01) < 0.002


@pytest.mark.parametrize("value", ["1e-3,x", "-0.001"])
def test_bad_decision_sweep_names_the_field(tmp_path, value):
    # Was a bare "could not convert string to float: 'x'" (and a negative cost was run).
    with pytest.raises(ValueError, match="decision_sweep must be comma-separated seconds >= 0"):
        bench.run(tiny(tmp_path, decision_sweep=value))
