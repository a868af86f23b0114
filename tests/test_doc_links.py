"""Every relative link in the README and docs/ points at a file that exists and, with a
#fragment into a markdown file, at one of its headings (GitHub's anchor rules): the README's
results table links each number to where its command is recorded."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(
    os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))


def github_anchor(heading: str) -> str:
    h = heading.strip().lower()
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def anchors(path: str) -> set[str]:
    out, seen, fence = set(), {}, False
    with open(path) as f:
        for line in f:
            if line.startswith("```"):
                fence = not fence
            if not fence and re.match(r"#{1,6} ", line):
                a = github_anchor(line.lstrip("#"))
                n = seen.get(a, 0)
                seen[a] = n + 1
                out.add(a if n == 0 else f"{a}-{n}")
    return out


def test_anchor_rule_hand_checked():
    assert github_anchor(" 1. Real engine, this machine, demo workload (`make demo`)") == \
        "1-real-engine-this-machine-demo-workload-make-demo"
    assert github_anchor("Capacity under p99 TTFT <= 2 s") == "capacity-under-p99-ttft--2-s"


@pytest.mark.parametrize("doc", DOCS)
def test_links_resolve(doc):
    with open(os.path.join(ROOT, doc)) as f:
        text = f.read()
    bad = []
    for m in re.finditer(r"\]\(([^)\s]+)\)", text):
        url = m.group(1)
        if re.match(r"[a-z]+:", url):
            continue
        path, _, frag = url.partition("#")
        full = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), path)) if path \
            else os.path.join(ROOT, doc)
        if not os.path.exists(full):
            bad.append(f"{url}: no such file")
        elif frag and full.endswith(".md") and frag not in anchors(full):
            bad.append(f"{url}: no such heading")
    assert not bad, f"{doc}: " + "; ".join(bad)
