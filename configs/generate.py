"""scripts/generate.py: the engine config plus prompts and sampling."""
import ml_collections

from configs import engine as engine_config


def get_config():
    c = ml_collections.ConfigDict()
    c.engine = engine_config.get_config()
    c.prompts = "The capital of France is|Once upon a time|def fibonacci(n):"  # '|'-separated
    c.prompts_file = ""          # one prompt per line; overrides `prompts` when set
    c.max_tokens = 32            # new tokens per prompt
    c.temperature = 0.0          # 0 = greedy
    c.top_p = 1.0                # nucleus sampling mass (1 = off)
    c.top_k = -1                 # sample among the k likeliest tokens (-1 = off)
    c.seed = 0                   # per-request seeds are seed + prompt index
    c.ignore_eos = False         # keep generating past EOS up to max_tokens
    c.output_json = ""           # write outputs and metrics here when set
    return c
