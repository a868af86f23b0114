"""scripts/serve.py without the optional server packages says how to install them."""
import subprocess
import sys


def test_serve_without_fastapi_names_the_extra():
    # Was a traceback ending in "No module named 'fastapi'" (make install leaves it out).
    code = ("import runpy, sys; sys.modules['fastapi'] = None; "
            "sys.argv = ['serve.py', '--config=configs/serve.py']; "
            "runpy.run_path('scripts/serve.py', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stderr
    assert "pip install -e '.[serve]'" in r.stderr and "fastapi" in r.stderr, r.stderr
