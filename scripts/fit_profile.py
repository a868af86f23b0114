"""Fit the GPU cost model to measured step times and save it as a named hardware profile.

  python scripts/fit_profile.py --config=configs/fit_profile.py --workdir=results/fit
  # then: scripts/benchmark.py ... --config.runner=sim --config.hardware=h200-fit
"""
import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmserve.sim import calibrate

_CONFIG = config_flags.DEFINE_config_file("config", "configs/fit_profile.py", "fit config")
_WORKDIR = flags.DEFINE_string("workdir", ".", "where the JSON report goes")


def main(argv):
    del argv
    c = _CONFIG.value
    paths = [p.strip() for p in c.inputs.split(",") if p.strip()]
    missing = [p for p in paths if not os.path.isfile(p)]
    if not paths or missing:
        raise app.UsageError(f"inputs must be comma-separated existing JSON files, "
                             f"missing: {missing or c.inputs!r}")
    eff, report = calibrate.fit_files(paths, c.hardware, c.holdout)
    report["inputs"] = paths
    os.makedirs(_WORKDIR.value, exist_ok=True)
    out = os.path.join(_WORKDIR.value, c.out)
    with open(out, "w") as f:
        json.dump(report, f, indent=1, default=float)
    print(calibrate.format_report(report))
    if c.save:
        path = calibrate.save_profile(c.name, c.hardware, eff, report, paths)
        print(f"profile {c.name!r}: {os.path.relpath(path)} "
              f"(use --config.hardware={c.name})")
    print(f"report: {out}")


if __name__ == "__main__":
    app.run(main)
