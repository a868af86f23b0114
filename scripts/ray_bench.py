"""Ray replicas vs one in-process engine, and tensor parallelism in the cost model.

  python scripts/ray_bench.py --config=configs/ray_bench.py --workdir=results/ray_bench
"""
from absl import app, flags, logging
from ml_collections import config_flags

from llmserve.cluster import ray_bench

_CONFIG = config_flags.DEFINE_config_file("config", "configs/ray_bench.py", "benchmark config")
_WORKDIR = flags.DEFINE_string("workdir", "results/ray_bench", "where results go")


def main(argv):
    del argv
    logging.set_verbosity(logging.INFO)
    results = ray_bench.run(_CONFIG.value)
    paths = ray_bench.write_outputs(results, _WORKDIR.value)
    print()
    print(ray_bench.format_results(results))
    for what, path in paths.items():
        print(f"{what}: {path}")


if __name__ == "__main__":
    app.run(main)
