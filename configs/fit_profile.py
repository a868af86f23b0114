"""Fit the simulator's cost model to GPU measurements: scripts/fit_profile.py.

Default: the recorded H200 runs (pallas_kernels/gpu_runs/), saved as the `h200-fit` hardware
profile. After a GPU check with its calibration sweep, refit from the sweep in one command:
  scripts/fit_profile.py --config=configs/fit_profile.py \
    --config.inputs=results/gpu_check/calib_sweep.json --config.name=h200-fit
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.inputs = ",".join(f"pallas_kernels/gpu_runs/2026-11-28_h200_run{i}_results.json"
                        for i in (1, 2, 3))     # comma-separated JSON files (module doc)
    c.hardware = "h200"                 # the base profile the factors are fitted on
    c.holdout = "auto"                  # auto: hold points out and report them | none
    c.name = "h200-fit"                 # profile name (llmserve/sim/profiles/NAME.json)
    c.save = True                       # write the profile the simulator loads by name
    c.out = "fit_profile.json"          # the full report (relative paths go under --workdir)
    return c
