"""docs/CONFIGS.md is generated from configs/*.py and must be current."""
import os
import textwrap

from llmserve import docs_gen

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_configs_doc_is_current():
    want = docs_gen.render(os.path.join(ROOT, "configs"))
    with open(os.path.join(ROOT, "docs", "CONFIGS.md")) as f:
        have = f.read()
    assert have == want, ("docs/CONFIGS.md is out of date with configs/*.py: run "
                          "`.venv/bin/python scripts/make_configs_doc.py` and commit it")


def test_every_config_field_has_a_comment():
    assert docs_gen.undocumented(os.path.join(ROOT, "configs")) == []


def test_every_leaf_of_every_config_is_listed():
    import ml_collections  # noqa: F401
    text = docs_gen.render(os.path.join(ROOT, "configs"))
    for path in docs_gen.config_files(os.path.join(ROOT, "configs")):
        cfg = docs_gen._load(path).get_config()
        for name, _ in docs_gen._leaves(cfg):
            assert f"| `{name}` |" in text, (path, name)


def test_comment_styles_parsed(tmp_path):
    src = textwrap.dedent('''\
        """A test config.

        More text."""
        import ml_collections


        def get_config():
            c = ml_collections.ConfigDict()
            c.a = 1                 # trailing
            c.b = "x"               # first part
            #                         second part
            # Leading block
            # on two lines.
            c.sub = ml_collections.ConfigDict()
            c.sub.x = (1, 2)        # in a | pipe
                                    # deep continuation
            c.sub.y = 2.5
            c.loop = ml_collections.ConfigDict()  # parent meaning
            for k in ("p", "q"):
                c.loop[k] = 0
            c.lit = ml_collections.ConfigDict({"u": 1})  # literal parent
            # g1 and g2 share this
            c.g1 = 1
            c.g2 = 2
            c.g3 = 3  # own
            return c
        ''')
    (tmp_path / "t.py").write_text(src)
    rows = {f: (d, m) for f, d, m in docs_gen.config_fields(str(tmp_path / "t.py"))}
    assert rows == {
        "a": ("1", "trailing"),
        "b": ("'x'", "first part second part"),
        "sub.x": ("(1, 2)", "in a | pipe deep continuation"),
        "sub.y": ("2.5", "Leading block on two lines."),   # inherited from `sub`
        "loop.p": ("0", "parent meaning"), "loop.q": ("0", "parent meaning"),
        "lit.u": ("1", "literal parent"),
        "g1": ("1", "g1 and g2 share this"), "g2": ("2", "g1 and g2 share this"),
        "g3": ("3", "own"),
    }
    assert [f for f, _, _ in docs_gen.config_fields(str(tmp_path / "t.py"))][:3] == \
        ["a", "b", "sub.x"]
    assert docs_gen.undocumented(str(tmp_path)) == ["configs/t.py: sub.y"]  # (before u.py)
    # A sub-config whose comment names another config file takes that file's meanings.
    (tmp_path / "u.py").write_text(textwrap.dedent('''\
        import ml_collections


        def get_config():
            c = ml_collections.ConfigDict()
            c.e = ml_collections.ConfigDict({"a": 5, "zz": 1})  # as in configs/t.py
            return c
        '''))
    urows = {f: m for f, _, m in docs_gen.config_fields(str(tmp_path / "u.py"))}
    assert urows == {"e.a": "trailing", "e.zz": "as in configs/t.py"}
    md = docs_gen.render(str(tmp_path))
    assert "A test config." in md and "More text" not in md
    assert "| `sub.x` | `(1, 2)` | in a \\| pipe deep continuation |" in md
