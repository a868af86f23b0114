"""What Triton makes of the Pallas kernels, without a GPU: pipeline buffers, shared memory,
registers, async copies in flight (see pallas_kernels/triton_ir.py).

  python scripts/kernel_ir.py --kernel=decode --config='{"num_stages": 3}'
  python scripts/kernel_ir.py --kernel=ragged --config='{"fused": true}' --out=results/ir.json

Needs the optional `triton` package (`pip install triton`; CI does not) for the compile
report; without it, it prints the size of each captured Triton module only.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_KERNEL = flags.DEFINE_enum("kernel", "decode", ["decode", "ragged"], "which kernel")
_CONFIG = flags.DEFINE_string("config", "{}", "JSON dict of keyword arguments of the kernel")
_BATCH = flags.DEFINE_integer("batch", 64, "sequences (decode batch / ragged slots)")
_CONTEXT = flags.DEFINE_integer("context", 2048, "context length (max pages x page size)")
_TOKENS = flags.DEFINE_integer("tokens", 640, "ragged: query rows")
_OUT = flags.DEFINE_string("out", "", "also write the reports here (JSON)")


def main(argv):
    del argv
    from pallas_kernels import paged_decode_attention, ragged_paged_attention, triton_ir
    cfg = json.loads(_CONFIG.value)
    fn = {"decode": paged_decode_attention, "ragged": ragged_paged_attention}[_KERNEL.value]
    specs = triton_ir.kernel_specs(_KERNEL.value, batch=_BATCH.value, context=_CONTEXT.value,
                                   num_tokens=_TOKENS.value)
    modules = triton_ir.triton_modules(lambda *a: fn(*a, **cfg), *specs)
    # launch parameters per module: the ragged 16-row class uses the decode_* pair
    warps = cfg.get("num_warps", 2 if _KERNEL.value == "decode" else 4)
    stages = cfg.get("num_stages", 4 if _KERNEL.value == "decode" else 3)
    params = [(warps, stages)] * len(modules)
    if _KERNEL.value == "ragged" and len(modules) == 2:
        params[0] = (cfg.get("decode_num_warps", 2), cfg.get("decode_num_stages", 4))
    reports = []
    for k, (text, (nw, ns)) in enumerate(zip(modules, params)):
        try:
            rep = triton_ir.compile_report(text, num_warps=nw, num_stages=ns)
        except ImportError:
            rep = {"note": "pip install triton for the compile report"}
        rep = {"module": k, "num_warps": nw, "num_stages": ns, "ttir_chars": len(text), **rep}
        reports.append(rep)
        print(json.dumps(rep))
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump({"kernel": _KERNEL.value, "config": cfg, "reports": reports}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
