"""Regenerate docs/CONFIGS.md from configs/*.py (every field, its default, its comment).

  python scripts/make_configs_doc.py            # writes docs/CONFIGS.md
  python scripts/make_configs_doc.py --check    # exit 1 if it is out of date
"""
import os
import sys

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_CHECK = flags.DEFINE_bool("check", False, "only check that docs/CONFIGS.md is current")
_OUT = flags.DEFINE_string("out", os.path.join(ROOT, "docs", "CONFIGS.md"), "output file")


def main(argv):
    del argv
    from llmserve import docs_gen
    text = docs_gen.render(os.path.join(ROOT, "configs"))
    missing = docs_gen.undocumented(os.path.join(ROOT, "configs"))
    if missing:
        print("fields without a comment:\n  " + "\n  ".join(missing))
    if _CHECK.value:
        current = open(_OUT.value).read() if os.path.exists(_OUT.value) else ""
        if current != text:
            print(f"{_OUT.value} is out of date: run python scripts/make_configs_doc.py")
            sys.exit(1)
        print(f"{_OUT.value} is current")
        return
    with open(_OUT.value, "w") as f:
        f.write(text)
    print(f"wrote {_OUT.value}: {text.count(chr(10) + '| `')} fields")


if __name__ == "__main__":
    app.run(main)
