"""Scheduler time per step and per scheduled request, every preset (mock runner, no model).

  python scripts/scheduler_bench.py --config=configs/scheduler_bench.py --workdir=results/sb
"""
import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmserve.core import sched_bench

_CONFIG = config_flags.DEFINE_config_file("config", "configs/scheduler_bench.py",
                                          "benchmark config")
_WORKDIR = flags.DEFINE_string("workdir", ".", "where the JSON results go")


def main(argv):
    del argv
    c = _CONFIG.value
    presets = [p for p in c.presets.split(",") if p]
    sizes = sched_bench.parse_sizes(c.sizes)
    results = sched_bench.run(presets, sizes, c.num_waiting, c.measure_steps, c.trace_requests,
                              c.trace_output_len, log=logging.info,
                              disable_gc=c.disable_gc)
    results["config"] = c.to_dict()
    os.makedirs(_WORKDIR.value, exist_ok=True)
    path = os.path.join(_WORKDIR.value, c.out)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    print(sched_bench.table(results))
    print(f"results: {path}")


if __name__ == "__main__":
    app.run(main)
