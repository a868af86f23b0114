"""Scheduler overhead benchmark (mock runner, no model): scripts/scheduler_bench.py."""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.presets = "static,continuous,chunked,predictive"  # comma-separated preset names
    c.sizes = "64,256,1024,4096"        # running requests (= max_num_seqs) per measurement
    c.num_waiting = 10_000              # waiting queue kept topped up to this many
    c.measure_steps = 100               # steps measured once the running set has filled
    c.trace_requests = 2000             # lifetime trace: number of requests...
    c.trace_output_len = 200            # ...each generating this many tokens
    c.disable_gc = False                # True: measure with Python's cyclic GC off
    c.out = "scheduler_bench.json"      # results file (relative paths go under --workdir)
    return c
