"""The transformers side of scripts/engine_bench.py: static, padded batching with generate().

Runs in the Python 3.11 reference venv (torch + transformers), never in the project venv, and
imports nothing from llmserve. engine_bench.py starts it once and keeps it warm; it talks JSON
lines over stdin/stdout, so the two sides can alternate (A B A B) without reloading:

  .ref311/bin/python scripts/hf_reference_bench.py --checkpoint DIR [--threads 2]
  stdin : {"case": "a", "prompts": [[ids...], ...], "output_lens": [...], "batch_size": 16}
  stdout: {"case": "a", "wall_s": ..., "generated_tokens": ..., "token_slots": ..., ...}
  stdin : {"cmd": "quit"}

Static batching as serving systems did before continuous batching: requests are taken in
order in batches of `batch_size` (0 = all at once); each batch is left-padded to its longest
prompt and decodes until its longest requested output, so every request in the batch pays for
the longest one. Only the first output_len tokens of each request count as generated; EOS
never stops a sequence early (the JAX side uses ignore_eos=True likewise).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="HF checkpoint dir (config.json + "
                    "model.safetensors), e.g. written by llmserve.model.loader.save_hf_checkpoint, "
                    "or a .gguf file (transformers dequantizes it: needs the gguf package)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--attn_implementation", default="sdpa", help="sdpa | eager")
    ap.add_argument("--pad_token_id", type=int, default=0, help="id used for left padding")
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    torch.set_num_threads(args.threads)
    where, kw = args.checkpoint, {}
    if os.path.isfile(args.checkpoint):
        where, kw = os.path.dirname(os.path.abspath(args.checkpoint)), {
            "gguf_file": os.path.basename(args.checkpoint)}
    model = AutoModelForCausalLM.from_pretrained(
        where, dtype=torch.float32, attn_implementation=args.attn_implementation, **kw).eval()
    # generate() treats None in a passed GenerationConfig as "unset" and falls back to the
    # model's own, so EOS is cleared there: every sequence runs to max_new_tokens.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = args.pad_token_id

    @torch.inference_mode()
    def run_batch(prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), args.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=new_tokens,
                                   min_new_tokens=new_tokens, eos_token_id=None,
                                   pad_token_id=args.pad_token_id)
        out = model.generate(ids, attention_mask=mask, generation_config=gen_cfg)
        return out[:, width:].tolist()

    # Warm up (allocator, thread pool, kernels): one small batch, not timed.
    run_batch([[1, 2, 3, 4], [5, 6]], 4)
    print(json.dumps({"ready": True, "torch": torch.__version__,
                      "transformers": transformers.__version__,
                      "threads": torch.get_num_threads(),
                      "attn_implementation": args.attn_implementation}), flush=True)

    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("cmd") == "quit":
            break
        prompts, out_lens = req["prompts"], req["output_lens"]
        bs = req.get("batch_size") or len(prompts)
        tokens: list[list[int]] = []
        slots = prompt_slots = 0
        t0 = time.perf_counter()
        for s in range(0, len(prompts), bs):
            bp, bo = prompts[s:s + bs], out_lens[s:s + bs]
            new = run_batch(bp, max(bo))
            tokens += [t[:n] for t, n in zip(new, bo)]
            slots += len(bp) * max(bo)
            prompt_slots += len(bp) * max(len(p) for p in bp)
        wall = time.perf_counter() - t0
        generated = sum(out_lens)
        print(json.dumps({
            "case": req.get("case"), "wall_s": wall, "generated_tokens": generated,
            "tokens_per_s": generated / wall, "batch_size": bs,
            "decode_token_slots": slots, "prompt_token_slots": prompt_slots,
            "prompt_tokens": sum(len(p) for p in prompts),
            "tokens": tokens if req.get("return_tokens", True) else None}), flush=True)


if __name__ == "__main__":
    main()
