"""HTTP serving benchmark against a running server (scripts/serve.py):

  scripts/bench_serving.py --config=configs/bench_serving.py --workdir=results/bench_serving
  (500 concurrent streams: the default; Poisson arrivals: --config.mode=poisson --config.rate=20)
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.base_url = "http://127.0.0.1:8000"  # the server
    c.model = "tiny"                    # the served model name
    c.api_key_env = "LLMSERVE_API_KEY"  # environment variable holding the API key ("" = none)
    c.endpoint = "completions"          # completions | chat
    c.mode = "concurrency"              # concurrency (N clients) | poisson (rate) | trace (times)
    c.concurrency = 500                 # concurrency: clients; other modes: in-flight cap (0 none)
    c.rate = 16.0                       # poisson: requests/s
    c.time_scale = 1.0                  # trace: multiplies the trace's inter-arrival gaps
    c.max_tokens = 0                    # per request (0 = the workload's output length)
    c.ignore_eos = True                 # generate exactly max_tokens (comparable runs)
    c.temperature = 0.0                 # sampling temperature
    c.timeout_s = 600.0                 # a request not done by then counts as hung
    c.check_metrics = True              # read /metrics afterwards (running, waiting, KV blocks)
    c.max_model_len = 256               # clip workload lengths to the server's context
    c.vocab_size = 256                  # random prompt ids below this (lengths-only workloads)
    c.tokenizer_path = ""               # checkpoint dir to tokenize text datasets ("" = none)

    c.slo = ml_collections.ConfigDict()
    c.slo.ttft_s = 5.0                  # goodput: a request counts if TTFT <= this...
    c.slo.tpot_s = 0.5                  # ...and TPOT <= this

    c.workload = ml_collections.ConfigDict()
    # synthetic | azure_csv | sharegpt | alpaca | castillo | jsonl
    c.workload.kind = "synthetic"
    c.workload.dataset = ""             # all kinds but synthetic: a dataset name (llmserve.data,
                                        # e.g. azure_conv_2023; scripts/fetch_data.py gets it)
    c.workload.path = ""                # or a data file's path (overrides dataset)
    c.workload.num_requests = 500       # request cap (0 = the whole file)
    c.workload.rate = 16.0              # arrival rate given to datasets without times (trace mode)
    c.workload.seed = 0                 # lengths, arrivals, random prompt ids
    c.workload.synthetic = ml_collections.ConfigDict()
    c.workload.synthetic.arrival = "poisson"        # poisson | gamma (trace mode times)
    c.workload.synthetic.lengths = "high_variance"  # azure_lognormal | high_variance | fixed
    c.workload.synthetic.prompt_len = (16, 96)      # high_variance: prompt tokens, uniform
    c.workload.synthetic.short_output = (2, 12)     # high_variance: short answers, uniform
    c.workload.synthetic.long_output = (32, 64)     # high_variance: long answers, log-uniform
    c.workload.synthetic.short_frac = 0.5           # high_variance: fraction of short answers
    return c
