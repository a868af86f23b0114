"""scripts/serve.py without the optional server packages says how to install them."""
import subprocess
import sys


def test_unknown_config_field_is_one_line_naming_it():
    # Was an ml_collections traceback ending in AttributeError: "'nonexistent'" (issue 18).
    r = subprocess.run([sys.executable, "scripts/serve.py", "--config=configs/serve.py",
                        "--config.engine.nonexistent=1"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        "--config.engine.nonexistent: unknown config field 'nonexistent' (the fields and "
        "their meaning are in the --config file, configs/serve.py by default)"]


def test_serve_without_fastapi_names_the_extra():
    # Was a traceback ending in "No module named 'fastapi'" (make install leaves it out).
    code = ("import runpy, sys; sys.modules['fastapi'] = None; "
            "sys.argv = ['serve.py', '--config=configs/serve.py']; "
            "runpy.run_path('scripts/serve.py', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stderr
    assert "pip install -e '.[serve]'" in r.stderr and "fastapi" in r.stderr, r.stderr
