"""Serving benchmark: policies x metrics on one workload (real JAX engine or simulator).

  python scripts/benchmark.py --config=configs/benchmark.py --workdir=results/demo
"""
from absl import app, flags, logging
from ml_collections import config_flags

from llmserve import bench

_CONFIG = config_flags.DEFINE_config_file("config", "configs/benchmark.py", "benchmark config")
_WORKDIR = flags.DEFINE_string("workdir", "results/benchmark", "where results go")


def main(argv):
    del argv
    logging.set_verbosity(logging.INFO)
    cfg = _CONFIG.value
    results = bench.run(cfg)
    paths = bench.write_outputs(results, _WORKDIR.value, figures=cfg.figures)
    print()
    print(bench.format_results(results))
    print()
    for what, path in paths.items():
        print(f"{what}: {path}")


if __name__ == "__main__":
    app.run(main)
