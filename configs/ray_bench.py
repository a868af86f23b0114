"""Ray replicas vs one in-process engine (measured), and tensor parallelism (cost model).

  python scripts/ray_bench.py --config=configs/ray_bench.py --workdir=results/ray_bench
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.num_requests = 64                 # requests in the timed run (all submitted at once)
    c.prompt_len_min = 16               # prompt lengths uniform in [min, max] (random bytes)
    c.prompt_len_max = 256              # (the longest prompt, tokens)
    c.max_tokens = 64                   # output tokens per request (greedy, ignore_eos)
    c.seed = 0                          # prompts
    c.warmup_rounds = 1                 # untimed runs of the same requests first: every
    #                                     replica compiles its own shapes (counted in "compiles")
    c.rounds = 3                        # timed runs per mode, alternating modes; best reported
    c.replica_counts = "1,2"            # Ray runs: this many replicas each ("" = none)
    c.policy = "least_tokens"           # router policy (llmserve.cluster.router)
    c.ray_num_cpus = 2                  # CPUs the local Ray cluster declares
    c.kill_replica = True               # then kill replica 0 of the last Ray mode mid-round
    #                                     and time its replacement (RayRouter max_restarts)
    c.engine = ml_collections.ConfigDict()   # EngineConfig fields of every replica
    c.engine.model = "tiny"             # preset or checkpoint directory
    c.engine.max_num_seqs = 32          # running requests per replica
    c.engine.max_num_batched_tokens = 512  # token budget per step
    c.engine.max_model_len = 512        # prompt + output tokens
    c.engine.warmup = True              # compile every bucket shape at start (24 here), so no
    #                                     timed round pays for a compile
    # Tensor-parallel table (simulated by llmserve/sim/cost_model.py, no devices needed).
    c.tp_model = "llama3-8b"            # model preset
    c.tp_hardware = "h100-80gb"         # hardware profile (needs a link_bandwidth)
    c.tp_sizes = "1,2,4,8"              # tensor-parallel degrees
    c.tp_decode_batch = 32              # decode step: this many sequences...
    c.tp_decode_context = 1024          # ...each at this context length
    c.tp_prefill_tokens = 2048          # prefill step: one prompt of this many tokens
    return c
