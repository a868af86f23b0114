"""A runner wrapper that fails a step when it holds a marked request: the fault the engine's
step isolation must contain (tests/test_isolation.py, tests/server/test_server_isolation.py).

A request is marked by its seed (SamplingParams.seed == POISON_SEED, which an HTTP client can
send too); the step fails once that request samples its FAULT_AT-th output token, so it has
already shared a few steps with the others.
"""
from __future__ import annotations

import jax

POISON_SEED = 666_666
FAULT_AT = 2


class InjectedStepFault(RuntimeError):
    pass


class FaultyRunner:
    """Wraps a runner. mode "host": raise before the inner runner runs (as a value that
    overflows while the batch is packed would); mode "device": delete the KV cache first, as
    a failed jitted step does to its donated buffers."""

    def __init__(self, inner, mode: str = "host"):
        self.inner = inner
        self.mode = mode
        self.num_faults = 0
        self.fault_batch_sizes: list[int] = []     # requests in each step that failed

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def execute(self, sched_out):
        for r in sched_out.scheduled:
            if r.sample and r.sampling[3] == POISON_SEED and r.token_index >= FAULT_AT:
                self.num_faults += 1
                self.fault_batch_sizes.append(len(sched_out.scheduled))
                if self.mode == "device":
                    for x in jax.tree.leaves(self.inner.kv_cache):
                        x.delete()
                raise InjectedStepFault(f"injected fault on request {r.req_id}")
        return self.inner.execute(sched_out)
