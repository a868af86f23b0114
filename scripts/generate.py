"""Generate text for prompts from flags or a file; print outputs and per-request metrics.

  python scripts/generate.py --config=configs/generate.py --config.engine.model=tiny \
      --config.prompts="Hello|World" --config.max_tokens=16
"""
import json
import os
import sys

from absl import app, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmserve import LLM, EngineConfig, SamplingParams

_CONFIG = config_flags.DEFINE_config_file("config", "configs/generate.py", "generation config")


def main(argv):
    del argv
    c = _CONFIG.value
    if c.prompts_file:
        with open(c.prompts_file) as f:
            prompts = [line.rstrip("\n") for line in f if line.strip()]
    else:
        prompts = [p for p in c.prompts.split("|") if p]
    logging.info("loading %s", c.engine.model)
    llm = LLM(config=EngineConfig.from_dict(c.engine))
    sps = [SamplingParams(max_tokens=c.max_tokens, temperature=c.temperature, top_p=c.top_p,
                          top_k=c.top_k, seed=c.seed + i, ignore_eos=c.ignore_eos)
           for i in range(len(prompts))]
    outs = llm.generate(prompts, sps)
    rows = []
    for o in outs:
        m = o.metrics
        print(f"--- request {o.request_id} ({m.num_prompt_tokens} prompt tokens, "
              f"finish: {o.finish_reason})")
        print(f"{o.prompt!r} -> {o.text!r}")
        rows.append(dict(request_id=o.request_id, prompt=o.prompt, text=o.text,
                         token_ids=o.token_ids, finish_reason=o.finish_reason,
                         ttft_s=m.ttft, tpot_s=m.tpot, e2e_s=m.e2e))
    print()
    print(f"{'request':>8} {'prompt':>7} {'output':>7} {'TTFT ms':>9} {'TPOT ms':>9} {'E2E ms':>9}")
    for o in outs:
        m = o.metrics
        tpot = f"{m.tpot * 1e3:9.1f}" if m.tpot is not None else f"{'-':>9}"
        print(f"{o.request_id:>8} {m.num_prompt_tokens:>7} {m.num_output_tokens:>7} "
              f"{m.ttft * 1e3:9.1f} {tpot} {m.e2e * 1e3:9.1f}")
    if c.output_json:
        with open(c.output_json, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"wrote {c.output_json}")


if __name__ == "__main__":
    app.run(main)
