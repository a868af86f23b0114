"""scripts/sampler_bench.py: sample()'s jitted cost per step, the sort-based sampler against
the current one, per vocabulary size, batch size and mix of sampling parameters.

  python scripts/sampler_bench.py --config=configs/sampler_bench.py --workdir=results/sampler_bench
  python scripts/sampler_bench.py --config=configs/sampler_bench.py --config.vocabs=32000 \
      --config.batches=16 --workdir=results/sb       # quick look
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.vocabs = "259,32000,49152,128256,152064"   # vocabulary sizes (comma-separated ints):
    #                                             the tiny preset's bytes, Llama-2, SmolLM2,
    #                                             Llama-3, Qwen2
    c.batches = "1,16,64"           # rows sampled per step (comma-separated ints)
    c.kinds = "greedy,temperature,top_k,top_p,top_p_flat,mixed"  # batch mixes to time:
    #                                 greedy (T=0), temperature (T=0.8, no filter), top_k (50),
    #                                 top_p (0.9 on Zipf-shaped logits, the nucleus a few dozen
    #                                 tokens), top_p_flat (0.9 on flat logits: the nucleus is
    #                                 thousands of tokens, so the whole-row search runs),
    #                                 mixed (rows cycle greedy/temperature/top_k/top_p/both)
    c.repeats = 7                   # timed calls per cell after one warm call; median reported
    c.old_repeats = 3               # timed calls of the sort-based sampler (it does the same
    #                                 work whatever the parameters, so one cell per vocab x batch)
    c.zipf_exponent = 1.5           # peaked logits: logit of the token of rank r is
    #                                 -zipf_exponent * log(r), ranks shuffled over the ids
    c.flat_std = 0.5                # flat logits: normal with this standard deviation
    c.seed = 0                      # logits and per-row seeds
    return c
