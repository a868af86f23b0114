"""docs/EXTENDING.md: each section's fenced python blocks, in order, run as one fresh process
from the repository root and must succeed (the blocks assert what they claim)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "EXTENDING.md")


def sections() -> dict[str, str]:
    with open(DOC) as f:
        text = f.read()
    out = {}
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        title = part.splitlines()[0].strip()
        blocks = re.findall(r"^```python\n(.*?)^```", part, flags=re.M | re.S)
        if blocks:
            out[title] = "\n".join(blocks)
    return out


def test_the_four_extensions_are_documented():
    assert set(sections()) == {"A scheduling policy", "A router policy", "A model family",
                               "A hardware profile"}


@pytest.mark.parametrize("title", sorted(sections()))
def test_section_runs(title):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", sections()[title]], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{title}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
