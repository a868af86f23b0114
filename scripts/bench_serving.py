"""HTTP load generator (client-side TTFT/TPOT/ITL/E2E, throughput, goodput) against a running
OpenAI-compatible server; prints a table and writes WORKDIR/bench_serving.json.

  python scripts/serve.py --config=configs/serve.py &
  python scripts/bench_serving.py --config=configs/bench_serving.py --workdir=results/bench_serving
"""
from absl import app, flags, logging
from ml_collections import config_flags

from llmserve.server.bench_client import run_from_config

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bench_serving.py", "bench config")
_WORKDIR = flags.DEFINE_string("workdir", "results/bench_serving", "where results go")


def main(argv):
    del argv
    logging.set_verbosity(logging.INFO)
    _, table = run_from_config(_CONFIG.value, _WORKDIR.value)
    print()
    print(table)
    print(f"\nresults: {_WORKDIR.value}/bench_serving.json")


if __name__ == "__main__":
    app.run(main)
