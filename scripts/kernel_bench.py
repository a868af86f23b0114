"""Kernel benchmark / GPU check stages for the Pallas paged-attention kernels.

One stage per process (see scripts/gpu_check.sh), each under a time budget, writing
<out_dir>/<stage>.json as it goes:

  PYTHONPATH=. python scripts/kernel_bench.py --stage=decode --out_dir=results/gpu_check
  PYTHONPATH=. python scripts/kernel_bench.py --stage=summary --out_dir=results/gpu_check
  # on CPU, tiny shapes in interpret mode (exercises every code path):
  python scripts/kernel_bench.py --stage=all --profile=smoke --interpret

Stages: env, correctness, decode, ragged, autotune (a comma list runs several in this
process); `all` runs them all;
`summary` merges the JSON files into results.json and prints the tables.
"""
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_STAGE = flags.DEFINE_list("stage", ["all"], "comma list of env, correctness, decode, "
                           "ragged, autotune, confirm, profile; or all; or summary")
_OUT = flags.DEFINE_string("out_dir", os.environ.get("OUT") or "results/gpu_check",
                           "directory of the per-stage JSON files")
_BUDGET = flags.DEFINE_float("budget_s", 60.0, "time budget of the stage (each, for all)")
_PROFILE = flags.DEFINE_enum("profile", "gpu", ["gpu", "smoke"],
                             "gpu: the real shapes; smoke: tiny shapes (CPU, interpret)")
_INTERPRET = flags.DEFINE_bool("interpret", False, "Pallas interpret mode (CPU)")
_REF_MEM = flags.DEFINE_float("ref_mem_gib", 48.0,
                              "skip XLA references needing more device memory than this")


def main(argv):
    del argv
    if _STAGE.value == ["summary"]:
        from pallas_kernels import bench_report
        _, text = bench_report.summarize(_OUT.value)
        print(text)
        return
    from pallas_kernels import benchmark
    args = benchmark.StageArgs(_PROFILE.value, _INTERPRET.value, _REF_MEM.value * 2**30)
    stages = list(benchmark.STAGES) if _STAGE.value == ["all"] else _STAGE.value
    unknown = [s for s in stages if s not in benchmark.STAGES]
    if unknown:
        raise app.UsageError(f"unknown stage(s) {unknown}; known: {list(benchmark.STAGES)}")
    for stage in stages:
        data = benchmark.run_stage(stage, _OUT.value, _BUDGET.value, args)
        print(f"stage {stage}: {len(data['items'])} items, {len(data['errors'])} errors, "
              f"{len(data['skipped'])} skipped, {data['elapsed_s']}s", flush=True)


if __name__ == "__main__":
    app.run(main)
