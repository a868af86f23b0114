"""The seed's open claims (issue 17): scripts/claims_bench.py.

Simulator at a real shape (Llama-3-8B on an H100 profile, the Azure conversation trace or
log-normal outputs of a chosen CV); the scheduler overhead on the real scheduler code.
  scripts/claims_bench.py --config=configs/claims.py --workdir=results/claims
  ... --config.experiments=variance --config.hardware=h200-fit   # one table, fitted H200
Policy lists are 'name=policy;name=policy' (a policy: preset+knob=value+..., bench.py).
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    # Tables to produce, comma-separated (llmserve/sim/claims.py EXPERIMENTS).
    c.experiments = "variance,kv,fragmentation,noise_floor,overhead,budget"
    c.runner = "sim"                    # the simulated tables run on the simulator only
    c.hardware = "h100-80gb"            # any sim/hardware.py profile, e.g. h200-fit
    # The model, workload (the kv/fragmentation/budget tables replay this trace), engine,
    # SLO and cost-model sections of configs/benchmark.py, with the same meaning.
    c.model = ml_collections.ConfigDict({"preset": "llama3-8b", "path": ""})
    # Azure conversation trace by dataset name (scripts/fetch_data.py).
    c.workload = ml_collections.ConfigDict({
        "kind": "azure_csv", "dataset": "azure_conv_2023", "path": "", "num_requests": 0,
        "rate": 1.0, "rate_scale": 0.0, "seed": 0, "time_limit_s": 0.0})
    # Section 2 of docs/RESULTS.md: 256 sequences, budget 512, static batch 32.
    c.engine = ml_collections.ConfigDict({
        "max_num_seqs": 256, "max_num_batched_tokens": 512, "block_size": 16,
        "num_kv_blocks": 0, "max_model_len": 8192, "static_batch_size": 32,
        "dtype": "auto", "seed": 0, "warmup": False})
    # Goodput SLOs (p99 TTFT, TPOT seconds).
    c.slo = ml_collections.ConfigDict({"ttft_s": 2.0, "tpot_s": 0.1})
    # Cost-model overrides; a fitted profile (hardware=h200-fit) brings its own factors.
    c.cost_model = ml_collections.ConfigDict({"calibration": "", "memory_utilization": 0.9,
                                              "efficiency": {}})

    # Same mean output, CV 0.3 .. 2.5; prompts and arrivals identical across CVs. The noisy
    # predictor at 100% (sigma = log 2) has a median relative error of ~0.45, about the
    # trained CASTILLO ensemble's 0.42.
    c.variance = ml_collections.ConfigDict({
        "cvs": "0.3,0.9,1.5,2.5", "output_mean": 256, "rate": 16.0, "num_requests": 2000,
        "prompt_max": 2048, "seed": 0,
        "policies": "static=static;continuous=continuous;chunked=chunked;"
                    "predictive (oracle)=predictive;"
                    "predictive (noisy 100%)=predictive+predictor=noisy_oracle:1.0:0"})
    # KV pool of 2,048 blocks (32k tokens): paged allocation preempts. Clients ask for
    # max_tokens 2048; requests end at their trace length.
    c.kv = ml_collections.ConfigDict({
        "num_requests": 3000, "rate_scale": 2.9, "num_kv_blocks": 2048,
        "client_max_tokens": 2048, "seed": 0,
        "policies": "paged, FCFS (chunked)=chunked;paged, shortest first (predictive)=predictive;"
                    "reserve_max, FCFS=chunked+kv_allocation=reserve_max;"
                    "reserve_max, shortest first=predictive+kv_allocation=reserve_max;"
                    "reserve_predicted (oracle)=predictive+kv_allocation=reserve_predicted",
        "noise_policy": "predictive+kv_allocation=reserve_predicted",
        "noise": "0,0.2,0.5,1.0"})
    # Reserved-but-unused KV: paged vs reserve_max at client max_tokens = the trace length
    # (0), 1024 and 2048; the default pool (memory left after weights).
    c.fragmentation = ml_collections.ConfigDict({
        "num_requests": 3000, "rate_scale": 2.9, "client_max_tokens": "0,1024,2048",
        "policies": "paged=chunked;reserve_max=chunked+kv_allocation=reserve_max"})
    c.noise_floor = ml_collections.ConfigDict({
        "datasets": "castillo_llama31_8b_alpaca_validate,castillo_llama31_8b_dolly_validate,"
                    "castillo_llama31_8b_sharegpt_validate"})
    c.overhead = ml_collections.ConfigDict({
        "presets": "chunked,predictive", "sizes": "64,256,1024", "num_waiting": 10_000,
        "measure_steps": 50, "trace_requests": 2000, "trace_output_len": 200})
    c.budget = ml_collections.ConfigDict({
        "num_requests": 3000, "rate_scale": 2.9, "budgets": "256,512,1024,2048",
        "policies": "chunked=chunked;predictive=predictive"})
    c.out = "claims.json"
    return c
