"""Edge/cloud offload: always-edge, always-cloud, UCB/Thompson bandits and the greedy oracle on
one request stream per rate; table, JSON and figures.

  python scripts/edge_cloud_bench.py --config=configs/edge_cloud.py --workdir=results/edge_cloud
  python scripts/edge_cloud_bench.py --replot=results/edge_cloud/edge_cloud.json --workdir=DIR
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmserve.cluster import edge_cloud_bench

_CONFIG = config_flags.DEFINE_config_file("config", "configs/edge_cloud.py", "benchmark config")
_WORKDIR = flags.DEFINE_string("workdir", "results/edge_cloud", "where JSON and figures go")
_FIGURES = flags.DEFINE_bool("figures", True, "write PNG figures")
_REPLOT = flags.DEFINE_string("replot", "", "redraw the figures and table of this results JSON "
                              "into --workdir instead of running")


def main(argv):
    del argv
    if _REPLOT.value:
        res = edge_cloud_bench.load(_REPLOT.value)
        print(edge_cloud_bench.format_results(res))
        for k, p in edge_cloud_bench.plot(res, _WORKDIR.value).items():
            print(f"{k}: {p}")
        return
    res = edge_cloud_bench.run(_CONFIG.value)
    paths = edge_cloud_bench.write_outputs(res, _WORKDIR.value, _FIGURES.value)
    print(edge_cloud_bench.format_results(res))
    for k, p in paths.items():
        logging.info("%s: %s", k, p)
        print(f"{k}: {p}")


if __name__ == "__main__":
    app.run(main)
