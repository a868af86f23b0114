"""Engine defaults: the built-in `tiny` model on the CPU, chunked-prefill scheduling."""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = "tiny"                    # preset name (tiny, llama3-8b, ...) or an HF checkpoint dir
    c.load_format = "auto"              # auto | dummy | safetensors
    c.dtype = "auto"                    # auto | float32 | bfloat16 | float16
    c.max_num_seqs = 64                 # most requests running at once
    c.max_num_batched_tokens = 512      # token budget per step (chunked prefill splits prompts)
    c.block_size = 16                   # tokens per KV block, a power of two
    c.num_kv_blocks = 0                 # 0 = enough for max_num_seqs full-length requests...
    c.kv_cache_memory_bytes = 2**30     # ...capped by this many bytes of KV cache
    c.max_model_len = 2048              # prompt + output tokens per request
    c.policy = "chunked"                # continuous | chunked
    c.attention_impl = "reference"      # reference | pallas | pallas_interpret
    c.seed = 0                          # dummy weights and default sampling seeds
    c.warmup = False                    # compile every padding bucket before serving
    return c
