"""Download public datasets by name, sha256-verified, into the data directory.

  python scripts/fetch_data.py --config=configs/data.py \
      --config.names=azure_conv_2023,castillo_llama31_8b
  python scripts/fetch_data.py --config=configs/data.py --config.names=all \
      --config.mirror=DIR_OR_URL
  python scripts/fetch_data.py --config=configs/data.py      # list datasets, sizes, licenses

Files go to $LLMSERVE_DATA (default ~/.cache/llmserve/data); configs then name the datasets
(`--config.workload.dataset=azure_conv_2023`). A re-run finds verified files and does nothing.
"""
import logging as std_logging
import os
import sys

from absl import app, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmserve.data import DATASETS, GROUPS, data_dir, resolve
from llmserve.data.fetch import fetch_file

_CONFIG = config_flags.DEFINE_config_file("config", "configs/data.py", "data config")


def _listing(directory: str) -> str:
    rows = [f"data directory: {directory}", f"{'dataset':<44}{'MB':>7}  {'here':<5} license"]
    for f in DATASETS.values():
        here = "yes" if os.path.isfile(os.path.join(directory, f.filename)) else "-"
        rows.append(f"{f.name:<44}{f.size / 1e6:>7.2f}  {here:<5} {f.license}")
    rows.append("groups: " + "; ".join(f"{g} ({len(n)} files)" for g, n in GROUPS.items()))
    return "\n".join(rows)


def main(argv):
    del argv
    c = _CONFIG.value
    logging.set_verbosity(logging.INFO)
    std_logging.getLogger("llmserve.data").setLevel(std_logging.INFO)
    directory = os.path.abspath(os.path.expanduser(c.data_dir)) if c.data_dir else data_dir()
    if not c.names.strip():
        print(_listing(directory))
        print("fetch with --config.names=NAME[,NAME...]")
        return
    try:
        files = resolve(c.names)
    except ValueError as e:
        sys.exit(f"--config.names: {e}")
    results = []
    for f in files:
        try:
            results.append(fetch_file(f, directory, c.mirror, c.retries, c.timeout_s))
        except (ValueError, RuntimeError) as e:
            sys.exit(f"fetch_data: {e}")
    print(f"{'dataset':<44}{'MB':>7}  {'status':<9}{'s':>6}")
    for r in results:
        print(f"{r['name']:<44}{r['bytes'] / 1e6:>7.2f}  {r['status']:<9}{r['seconds']:>6.1f}")
    print(f"{len(results)} files verified in {directory}")


if __name__ == "__main__":
    app.run(main)
