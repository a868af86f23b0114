import os

# Tests run on the CPU with deterministic, single-threaded-ish XLA so results are reproducible.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
