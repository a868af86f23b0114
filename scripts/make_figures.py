"""Redraw every PNG of docs/figures from the JSON results in docs/results (no numbers typed in).

  python scripts/make_figures.py
  # after rerunning a benchmark (commands in docs/RESULTS.md), copy its results.json first:
  python scripts/make_figures.py --collect=demo=results/demo,sim_azure_full=results/sim_azure_full
"""
import os
import sys

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_COLLECT = flags.DEFINE_list("collect", [], "NAME=WORKDIR pairs: copy WORKDIR/results.json to "
                             "docs/results/NAME.json before drawing")
_RESULTS = flags.DEFINE_string("results_dir", os.path.join(ROOT, "docs", "results"),
                               "where the JSON results are")
_OUT = flags.DEFINE_string("out_dir", os.path.join(ROOT, "docs", "figures"), "where PNGs go")
_ONLY = flags.DEFINE_list("only", [], "draw only these PNG names")
_STRICT = flags.DEFINE_bool("strict", False, "exit 1 if any figure could not be drawn")


def main(argv):
    del argv
    from llmserve.metrics import figures
    if _COLLECT.value:
        pairs = dict(p.split("=", 1) for p in _COLLECT.value)
        for name, path in figures.collect(pairs, _RESULTS.value).items():
            print(f"collected {name}: {path}")
    made = figures.make_doc_figures(_RESULTS.value, _OUT.value, _ONLY.value or None)
    width = max(len(k) for k in made)
    for png, what in made.items():
        print(f"{png:<{width}}  {what}")
    if _STRICT.value and any(not str(v).endswith(".png") for v in made.values()):
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
