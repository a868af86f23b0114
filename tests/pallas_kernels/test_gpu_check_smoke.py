"""The GPU check's stages run end to end on a CPU (tiny shapes, interpret mode).

A GPU session is rare and short: a stage that crashes on a refactor would cost the one run.
This runs every stage of scripts/kernel_bench.py as gpu_check.sh does (smoke profile) and
checks that each finished without errors and that the summary holds every table.
"""
from __future__ import annotations

import json
import os

import pytest

from pallas_kernels import bench_report, benchmark


@pytest.mark.slow
def test_every_stage_runs_in_smoke_mode(tmp_path):
    args = benchmark.StageArgs(profile="smoke", interpret=True)
    for stage in ("env", "correctness", "decode", "ragged", "autotune", "confirm", "profile"):
        data = benchmark.run_stage(stage, str(tmp_path), 120.0, args)
        assert data["finished"] and not data["errors"], (stage, data["errors"])
        assert data["items"] or stage == "env", stage
    with open(os.path.join(tmp_path, "ragged.json")) as f:
        ragged = json.load(f)
    cases = [i["case"] for i in ragged["items"]]
    assert any("glue" in c for c in cases) and any("pure decode" in c for c in cases)
    assert any("per layer" in c for c in cases)
    _, text = bench_report.summarize(str(tmp_path))
    for table in ("correctness on device", "decode, Llama-3-8B", "ragged mixed batch",
                  "autotune", "confirm"):
        assert table in text, table
