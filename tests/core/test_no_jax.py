import subprocess
import sys


def test_core_does_not_import_jax():
    code = ("import sys, llmserve.core.scheduler, llmserve.core.block_manager, "
            "llmserve.core.request_queue, llmserve.core.sched_output, llmserve.runner.mock_runner\n"
            "heavy = [m for m in ('jax', 'flax', 'optax', 'ml_collections') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)
