"""Evaluate a trained length predictor on its held-out test split, against baselines, the
noise floor and the targets; time predict() on batches of 64.

  python scripts/eval_predictor.py --config=configs/predictor.py --workdir=runs/predictor
  # + 5-fold cross-validation of the checkpoint's recipe (5 more trainings):
  python scripts/eval_predictor.py ... --config.eval.cv_folds=5

Writes WORKDIR/eval.json. With --config.eval.split_from=OTHER_WORKDIR the checkpoint is scored
on OTHER's held-out split instead (WORKDIR/eval_on_<OTHER>.json).
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmserve.predictor.evaluate import (ROW_ORDER, format_by_source, format_cv_table,
                                         format_table, run_evaluation)

_CONFIG = config_flags.DEFINE_config_file("config", "configs/predictor.py", "predictor config")
_WORKDIR = flags.DEFINE_string("workdir", "runs/predictor", "holds the checkpoint")


def main(argv):
    del argv
    c = _CONFIG.value
    res = run_evaluation(_WORKDIR.value, c.eval.latency_batch_size, c.eval.latency_repeats,
                         c.eval.workload_log, c.eval.workload_rate, c.eval.workload_max_len,
                         c.eval.workload_num_requests, c.eval.workload_output_scale,
                         c.eval.cv_folds, c.eval.split_from)
    rows = res["rows"]
    members = sorted(k for k in rows if k.startswith("member_") and k != "member_avg")
    print(f"data: {res['data']}; held-out: {res['num_test_prompts']} prompts, "
          f"{res['num_test_samples']} samples")
    print(format_table(rows, list(ROW_ORDER[:2]) + members + list(ROW_ORDER[2:])))
    print(format_by_source(res["by_source"]))
    for kind, lat in res["latency"].items():
        print(f"latency ({kind}, batch {lat['batch_size']}): {lat['ms_per_request']:.4f} "
              f"ms/request (p90 {lat['ms_per_request_p90']:.4f}), first call "
              f"{lat['first_call_ms']:.0f} ms")
    for name, ok in res["targets"].items():
        print(f"target {name}: {'met' if ok else 'NOT met'}")
    if res.get("workload_log"):
        print(f"held-out workload: {res['workload_requests']} requests -> {res['workload_log']}")
        if res.get("workload_checkpoint"):
            print(f"predictor rescaled to its output lengths: {res['workload_checkpoint']}")
    if "cross_validation" in res:
        print(format_cv_table(res["cross_validation"]))
    print(f"results: {res['results_file']}")


if __name__ == "__main__":
    app.run(main)
