"""Every colab/ notebook runs top to bottom on CPU (the GPU one in its CPU mode), and the
committed files carry no outputs.

Notebooks run with nbclient on the `python3` kernel of this interpreter (the venv's
ipykernel), with LLMSERVE_NB_SMALL=1 so each uses its small configuration. Those measured
over ~60 s on the 2-core CI machine are marked slow (`make test-all`). Notebooks that fetch a
dataset do so for real, into an empty data directory, from ../shared/data as the mirror
(LLMSERVE_DATA_MIRROR); without that directory they are skipped.
"""
import glob
import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(ROOT, "colab")
NOTEBOOKS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(COLAB, "*.ipynb")))
SLOW = {"02_scheduling_policies.ipynb", "03_length_predictor.ipynb", "04_cluster.ipynb"}
SHARED = os.path.join(ROOT, "..", "shared", "data")
NEEDS_DATA = {"02_scheduling_policies.ipynb", "04_cluster.ipynb"}
EXPECTED = {"01_quickstart.ipynb", "02_scheduling_policies.ipynb",
            "03_length_predictor.ipynb", "04_cluster.ipynb", "05_kernels_gpu.ipynb"}


def test_every_notebook_is_there():
    assert EXPECTED <= set(NOTEBOOKS)


def test_notebooks_match_their_generator():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "make_notebooks", os.path.join(ROOT, "scripts", "make_notebooks.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert set(gen.NOTEBOOKS) == set(NOTEBOOKS)
    for name, cells in gen.NOTEBOOKS.items():
        want = [c.source for c in gen.build(name, cells).cells]
        have = [c.source for c in nbformat.read(os.path.join(COLAB, name), as_version=4).cells]
        assert have == want, f"{name} differs from scripts/make_notebooks.py: rerun it"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_outputs_stripped(name):
    nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                f"{name} cell {i} has outputs: clear them (python scripts/make_notebooks.py)"


def _execute(name, data_dir=""):
    nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
    env_keys = {"LLMSERVE_NB_SMALL": "1", "JAX_PLATFORMS": "cpu", "LLMSERVE_DATA": data_dir,
                "LLMSERVE_DATA_MIRROR": os.path.abspath(SHARED)}
    old = {k: os.environ.get(k) for k in env_keys}
    old_path = os.environ.get("PATH", "")
    os.environ.update(env_keys)
    # The kernel is this interpreter's (the venv's ipykernel), whatever `python3` is on PATH.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + old_path
    try:
        client = nbclient.NotebookClient(
            nb, timeout=600, kernel_name="python3",
            resources={"metadata": {"path": COLAB}})
        client.execute()
    finally:
        os.environ["PATH"] = old_path
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _text(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") or str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(out)


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


@pytest.mark.parametrize("name", _params(NOTEBOOKS))
def test_notebook_runs(name, tmp_path):
    if name in NEEDS_DATA and not os.path.isdir(SHARED):
        pytest.skip("needs ../shared/data as the data mirror")
    nb = _execute(name, str(tmp_path / "data"))
    text = _text(nb)
    # Each notebook prints what it computed; check the landmarks, not the numbers.
    landmarks = {
        "01_quickstart.ipynb": ["TTFT", "True", "tokens"],
        "02_scheduling_policies.ipynb": ["static", "continuous", "chunked", "predictive",
                                         "shortest_first"],
        "03_length_predictor.ipynb": ["noise_floor", "constant", "coverage by nominal",
                                      "checkpoint:"],
        "04_cluster.ipynb": ["power_of_two/distributed", "64 replicas"],
        "05_kernels_gpu.ipynb": ["backend:", "decode/", "ragged/", "max |err|"],
    }.get(name, [])
    for s in landmarks:
        assert s in text, (name, s, text[-2000:])
