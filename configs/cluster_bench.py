"""Cluster benchmark: router policies x decision placements on one workload, simulated.

Defaults: the Azure conversation trace (rate-scaled to ~18 req/s per replica, near an H100's
capacity for it) on 8 H100 replicas with Llama-3-8B shapes, every policy, centralized and
distributed. Examples (docs/RESULTS.md has the exact commands of every figure):
  scripts/cluster_bench.py --config=configs/cluster_bench.py --workdir=results/cluster8
  scripts/cluster_bench.py --config=configs/cluster_bench.py --config.mode=scale \
    --config.cluster.replicas=h100-80gb:1000 --config.workload.kind=azure_resampled \
    --config.workload.rate_per_replica=16.4 --config.policies=power_of_two \
    --config.placements=centralized --workdir=results/cluster_scale
"""
import ml_collections

_ALL = ("round_robin,random,least_requests,least_tokens,power_of_two,kv_aware,prefix_aware,"
        "predicted_work")


def get_config():
    c = ml_collections.ConfigDict()
    c.mode = "compare"                  # compare (policies x placements) | scale (one timed run)
    c.policies = _ALL                   # router policies (scale: the first one)
    c.placements = "centralized,distributed"  # decision placements (scale: the first one)
    c.decision_sweep = ""               # compare: also every run at these decision_base_s
                                        # values (comma-separated seconds), e.g. "1e-3,5e-3"
    c.predictors = ""                   # compare: predicted_work once per predictor spec,
                                        # e.g. "oracle,checkpoint:runs/predictor" ("" = router's)
    c.profile = False                   # scale: also cProfile's top 20 functions

    c.workload = ml_collections.ConfigDict()
    # azure_csv (the trace, rate-scaled) | azure_resampled (its length pairs, Poisson arrivals)
    # | shared_prefix (system prompts x questions) | synthetic (the Azure trace's fitted
    # log-normal lengths) | jsonl (e.g. a predictor's held-out workload).
    c.workload.kind = "azure_csv"
    c.workload.dataset = "azure_conv_2023"  # azure_*: the trace, by dataset name (fetch it
                                        # with scripts/fetch_data.py)
    c.workload.path = ""                # azure_* and jsonl: a file's path (overrides dataset)
    c.workload.num_requests = 0         # cap (0: the whole file / rate x duration_s)
    c.workload.rate = 0.0               # offered req/s (0: rate_per_replica x replicas)
    c.workload.rate_per_replica = 18.0  # offered req/s per replica when rate is 0
    c.workload.duration_s = 60.0        # generated workloads: arrivals over this long
    c.workload.seed = 0                 # arrivals, resampling, token ids
    c.workload.num_prefixes = 20        # shared_prefix: distinct system prompts
    c.workload.prefix_len = 1024        # shared_prefix: tokens per system prompt
    c.workload.question_len = (16, 128)  # shared_prefix: question tokens, uniform range
    c.workload.popularity_zipf = 0.0    # shared_prefix: Zipf exponent of prompt popularity

    c.cluster = ml_collections.ConfigDict()
    c.cluster.replicas = "h100-80gb:8"  # HARDWARE:COUNT[,...]; mixed, e.g. a100-80gb:4,h100-80gb:4
    c.cluster.model = "llama3-8b"       # model preset whose shapes the cost model uses
    c.cluster.memory_utilization = 0.9  # fraction of HBM for weights + KV (sizes each pool)
    c.cluster.client_max_tokens = 1000  # the max_tokens routers see (the trace's outputs stop
                                        # at 1,000 tokens, which looks like its service's cap)
    c.cluster.sample_interval_s = 0.5   # load samples for the figures and the load CV, s
    c.cluster.time_limit_s = 0.0        # stop the simulation here, abort the rest (0: none)
    c.cluster.seed = 0                  # router randomness, generated token ids
    c.cluster.num_workers = 1           # processes simulating the replicas (1: this one);
                                        # > 1 needs distributed placement, staleness_s > 0
    c.cluster.engine = ml_collections.ConfigDict()   # every replica's EngineConfig fields
    c.cluster.engine.policy = "chunked"              # the replicas' scheduling preset
    c.cluster.engine.max_num_seqs = 256              # most requests running per replica
    c.cluster.engine.max_num_batched_tokens = 2048   # token budget per step
    c.cluster.engine.max_model_len = 8192            # prompt + output tokens per request
    c.cluster.engine.block_size = 16                 # tokens per KV block
    c.cluster.engine.enable_prefix_caching = True    # replicas reuse cached prompt prefixes

    c.placement = ml_collections.ConfigDict()
    c.placement.num_routers = 4         # distributed: routers (centralized always has 1)
    c.placement.staleness_s = 0.1       # distributed: load snapshot refresh period (max age), s
    c.placement.decision_base_s = 1e-4  # router time per decision, s
    c.placement.decision_per_replica_s = 1e-7  # plus per replica state the policy reads, s
    c.placement.local_accounting = True  # distributed: routers count their own dispatches

    c.router = ml_collections.ConfigDict()
    c.router.predictor = "oracle"       # predicted_work: oracle | noisy_oracle:REL | checkpoint:DIR
    c.router.imbalance_abs = 16384.0    # prefix_aware: balance wins when the match's replica
    c.router.imbalance_rel = 1.5        # has > abs more outstanding tokens AND > rel x the least
    c.router.min_match_blocks = 1       # prefix_aware: shortest prefix match that counts
    c.router.capacity_blocks = 1 << 20  # prefix_aware: block hashes remembered per replica

    c.slo = ml_collections.ConfigDict()
    c.slo.ttft_s = 2.0                  # goodput: a request meets the SLOs with TTFT <= this
    c.slo.tpot_s = 0.1                  # ... and TPOT <= this, seconds

    c.figures = True                    # compare: TTFT CDFs and per-replica load PNGs
    return c
