"""No absolute path of one machine in anything a user runs or reads: configs, scripts,
notebooks, the README, the docs, the library's docstrings. Data is named by dataset
(llmserve.data), outputs go to relative workdirs (results/, runs/). Recorded outputs of past
runs under pallas_kernels/gpu_runs/ are data, not instructions, and are left
as they were written."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# /content/ is Colab's own working directory, where the notebooks clone the repository.
MACHINE_PATH = re.compile(r"(?<![\w.~])(/work/|/root/|/home/[A-Za-z_][\w-]*|/tmp/|/Users/"
                          r"|/mnt/|/scratch/|[A-Z]:\\\\Users)")
SCANNED = re.compile(r"^(configs/.*\.py|scripts/.*|colab/.*\.ipynb|README\.md|docs/.*\.(md|json)|"
                     r"llmserve/.*\.py|pallas_kernels/.*\.(py|md)|Makefile|setup\.py)$")


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [p for p in out if SCANNED.match(p)]


def test_the_pattern_catches_what_it_must():
    for bad in ("--workdir=/tmp/p5_v3", "_DATA = \"/work/shared/data\"", "see /root/.cache/x",
                "/home/alice/data.csv", "checkpoint:/tmp/x"):
        assert MACHINE_PATH.search(bad), bad
    for ok in ("runs/predictor", "~/.cache/llmserve/data", "../shared/data",
               "https://raw.githubusercontent.com/a/b/c/tmp/x", "results/tmp/x"):
        assert not MACHINE_PATH.search(ok), ok


def test_no_machine_paths_in_what_users_run_or_read():
    files = _tracked()
    assert any(p.startswith("configs/") for p in files) and "README.md" in files
    hits = []
    for rel in files:
        path = os.path.join(ROOT, rel)
        if not os.path.isfile(path):      # deleted in the working tree, not yet committed
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f, 1):
                m = MACHINE_PATH.search(line)
                if m:
                    hits.append(f"{rel}:{i}: {line.strip()[:120]}")
    assert not hits, "machine paths (name a dataset or a relative workdir):\n" + "\n".join(hits)
