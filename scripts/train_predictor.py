"""Train the output-length predictor ensemble and write an Orbax checkpoint + metrics JSON.

  python scripts/train_predictor.py --config=configs/predictor.py --workdir=runs/predictor

Trains on the datasets config.data names (fetch them first: python scripts/fetch_data.py
--config=configs/data.py --config.names=castillo_llama31_8b,instruct_aux), or with
--config.data.synthetic=True on a synthetic trace log whose lengths depend on the prompt;
writes WORKDIR/checkpoint and WORKDIR/metrics.json.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmserve.predictor.train import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", "configs/predictor.py", "predictor config")
_WORKDIR = flags.DEFINE_string("workdir", "runs/predictor", "checkpoint and metrics go here")


def main(argv):
    del argv
    m = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    logging.info("done: %d epochs in %.1fs", m["epochs_run"], m["train_seconds"])
    print(f"{'split':<8}{'MAE':>8}{'3-bucket':>10}{'Kendall':>9}{'cov80':>8}")
    for split in ("val", "test"):
        if split in m:
            r = m[split]
            print(f"{split:<8}{r['mae']:>8.1f}{r['bucket_acc']:>10.3f}{r['kendall_tau']:>9.3f}"
                  f"{r['coverage80']:>8.3f}")
    print(f"checkpoint: {os.path.join(_WORKDIR.value, 'checkpoint')}")


if __name__ == "__main__":
    app.run(main)
