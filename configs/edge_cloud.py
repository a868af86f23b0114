"""Edge/cloud offload benchmark (scripts/edge_cloud_bench.py): one Jetson AGX Orin running
Llama-3.2-3B next to the client, two H100s running Llama-3-8B a network away; always-edge,
always-cloud, UCB and Thompson bandits and the greedy oracle on the identical request stream at
each rate of `rates`. Model, hardware, power, network, SLO and reward are all fields here.

  scripts/edge_cloud_bench.py --config=configs/edge_cloud.py --workdir=results/edge_cloud
  ... --config.cloud.idle_share=0.0     # a shared cloud: its idle draw is not ours
"""
import ml_collections


def _side(hardware, model, replicas, seqs, tokens, mem, busy_w, idle_w, idle_share, pue):
    s = ml_collections.ConfigDict()
    s.hardware = hardware               # sim/hardware.py profile
    s.model = model                     # model preset, or llama3.2-1b / llama3.2-3b
    s.num_replicas = replicas           # devices on this side (the cloud routes least-loaded)
    s.max_num_seqs = seqs               # most requests running at once per device
    s.max_num_batched_tokens = tokens   # token budget per step (chunked prefill)
    s.memory_utilization = mem          # share of device memory for weights + KV pool
    s.busy_w = busy_w                   # watts while a step runs
    s.idle_w = idle_w                   # watts while powered and idle
    s.idle_share = idle_share           # share of idle draw charged to this workload (0..1)
    s.pue = pue                         # facility overhead multiplier (>= 1)
    return s


def get_config():
    c = ml_collections.ConfigDict()
    # fixed baselines, bandits (ucb, ucb_tuned, thompson; ':none' / ':size' / ':size_load'
    # picks the context), and the greedy look-ahead oracle
    c.strategies = ("always_edge,always_cloud,ucb,ucb_tuned,thompson,ucb_tuned:none,"
                    "thompson:none,oracle")
    c.rates = "0.5,1,2,4"               # arrival rates swept, req/s (the same stream rescaled)
    c.max_model_len = 4096              # prompt + output tokens per request (both sides)
    c.block_size = 16                   # KV block tokens

    c.workload = ml_collections.ConfigDict()
    c.workload.kind = "synthetic"       # synthetic (Azure-fitted lengths) | azure_csv
    c.workload.dataset = "azure_conv_2023"  # azure_csv: the trace (lengths only; arrivals
                                        # Poisson), by dataset name (scripts/fetch_data.py)
    c.workload.path = ""                # or the trace file's path (overrides dataset)
    c.workload.num_requests = 600       # requests per run
    c.workload.seed = 0                 # arrivals, lengths, network jitter

    # Jetson AGX Orin 64GB (60 W MAXN module power; ~10 W idle assumed); shared LPDDR5, so
    # half its memory for the model.
    c.edge = _side("jetson-agx-orin-64gb", "llama3.2-3b", 1, 16, 1024, 0.5,
                   60.0, 10.0, 1.0, 1.0)
    # H100 SXM (700 W board power, ~75 W idle), data-centre PUE 1.1, dedicated to the service.
    c.cloud = _side("h100-80gb", "llama3-8b", 2, 128, 2048, 0.9, 700.0, 75.0, 1.0, 1.1)

    c.network = ml_collections.ConfigDict()
    c.network.rtt_s = 0.04              # client <-> cloud round trip, seconds
    c.network.jitter_mean_s = 0.005     # exponential extra one-way delay, mean, seconds
    c.network.uplink_mbps = 20.0        # prompt upload bandwidth, Mbit/s
    c.network.downlink_mbps = 50.0      # streamed tokens, Mbit/s
    c.network.prompt_bytes_per_token = 4.0     # ~4 bytes of text per token
    c.network.output_bytes_per_token = 150.0   # one SSE chunk per streamed token
    c.network.request_overhead_bytes = 500.0  # HTTP + JSON framing per request
    c.network.edge_delay_s = 0.0        # client <-> edge one-way delay (same box: 0)

    c.slo = ml_collections.ConfigDict()
    c.slo.ttft_s = 1.0                  # TTFT limit at the client, seconds
    c.slo.tpot_s = 0.1                  # TPOT limit, seconds per output token

    c.reward = ml_collections.ConfigDict()
    # reward = (w_slo * SLO met + w_energy * max(0, 1 - marginal J / energy_ref_j)) / sum(w):
    # service first, energy as the tie-breaker ("equal service"), fixed before any run.
    c.reward.w_slo = 1.0
    c.reward.w_energy = 0.25
    c.reward.energy_ref_j = 2000.0      # marginal joules at which the energy term reaches 0

    c.bandit = ml_collections.ConfigDict()
    c.bandit.context = "size_load"      # none | size | size_load (default for bare ucb/thompson)
    c.bandit.size_edges = "512,2048"    # prompt-token bucket edges
    c.bandit.load_edges = "2,8"         # edge outstanding-request bucket edges
    c.bandit.exploration = 1.0          # UCB exploration constant c
    c.bandit.batch_window_s = 0.0       # 0: decide per request; > 0: per batch of this window
    c.bandit.edge_batch_capacity = 0    # per batch: at most this many to the edge (0 = no cap)
    c.bandit.seed = 0                   # bandit and jitter seed
    return c
