"""Cluster benchmark: router policies x decision placements on one workload (simulated).

  python scripts/cluster_bench.py --config=configs/cluster_bench.py --workdir=results/cluster
"""
from absl import app, flags, logging
from ml_collections import config_flags

from llmserve.cluster import bench

_CONFIG = config_flags.DEFINE_config_file("config", "configs/cluster_bench.py", "cluster config")
_WORKDIR = flags.DEFINE_string("workdir", "results/cluster", "where results go")


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
