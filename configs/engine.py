"""Engine defaults: the built-in `tiny` model on the CPU, chunked-prefill scheduling."""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = "tiny"                    # preset (tiny, llama3-8b, ...: random weights), a packaged
    #                                     model (smollm2-135m-instruct), a .gguf file or an HF dir
    c.load_format = "auto"              # auto (checkpoint: its weights, preset: dummy) | dummy |
    #                                     safetensors
    c.dtype = "auto"                    # auto | float32 | bfloat16 | float16
    c.max_num_seqs = 64                 # most requests running at once
    c.max_num_batched_tokens = 512      # token budget per step (chunked prefill splits prompts)
    c.block_size = 16                   # tokens per KV block, a power of two
    c.num_kv_blocks = 0                 # 0 = enough for max_num_seqs full-length requests,
    #                                     capped by the KV memory budget:
    c.kv_cache_memory_bytes = 0         # bytes of KV per device; 0 = from memory_utilization
    c.memory_utilization = 0.9          # fraction of device memory (GPU) or host RAM (CPU) for
    #                                     weights + activations + KV (vLLM's gpu_memory_utilization)
    c.cpu_kv_cache_max_bytes = 4 * 2**30  # CPU: the automatic KV budget stops here (vLLM-CPU's
    #                                     default KV space)
    c.max_model_len = 0                 # prompt + output tokens per request; 0 = the model's own
    #                                     limit, capped by what the KV pool holds
    c.policy = "chunked"                # static | continuous | chunked | predictive
    c.attention_impl = "reference"      # reference | pallas | pallas_interpret
    c.tensor_parallel_size = 1          # devices per replica (tp mesh axis); must divide the
                                        # model's num_heads, num_kv_heads, intermediate_size
    c.seed = 0                          # dummy weights and default sampling seeds
    c.warmup = False                    # compile every padding bucket before serving
    c.trace_log = ""                    # append a JSONL record per finished request (the
                                        # length predictor's data); "" = no log
    # Scheduler knobs; None (placeholder) = the value of the `policy` preset.
    ph = ml_collections.config_dict.placeholder
    c.chunked_prefill = ph(bool)        # may a prompt be split across steps
    c.queue_policy = ph(str)            # fcfs | shortest_first (aging) | length_bins
    c.kv_allocation = ph(str)           # paged | reserve_max | reserve_predicted
    c.preemption_victim = ph(str)       # newest | most_remaining (predicted work)
    c.aging_rate = ph(float)            # shortest_first: priority tokens gained per s waited
    c.length_bins = ph(str)             # length_bins: predicted-length bin edges, e.g. "50,500"
    c.static_batch_size = ph(int)       # static: requests per formed batch
    c.static_batch_timeout_s = ph(float)  # static: dispatch a partial batch after this wait
    c.enable_prefix_caching = ph(bool)  # share the KV of identical prompt prefixes
    c.predictor = ph(str)               # none | oracle | noisy_oracle:REL[:SEED] | constant:N |
    #                                     checkpoint:DIR
    return c
