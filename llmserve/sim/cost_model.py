"""Roofline step time of a SchedulerOutput from the model's shapes.

    time = step_overhead + per_seq_overhead * seqs
         + max(linear FLOPs / (peak * e_lc), (weight + activation bytes) / (bw * e_lm))
         + max(attention FLOPs / (peak * e_ac), KV bytes read and written / (bw * e_am))

Linear layers read every weight once per step whatever the batch (why decode is memory bound
and batching pays); the LM head runs only for rows that sample. Attention of a request with q
new tokens over a context of c reads its c cached K/V and computes q*c - q(q-1)/2
query-key pairs (causal). Static batching's padding slots are computed like real tokens.

With `buckets` (the JaxRunner's padding buckets) the counts are those of the padded batch the
plain-jnp CPU runner really executes: tokens padded to a bucket, and its attention's static
shapes: a decode-only batch gathers each sequence slot's whole padded block table once
(paged_decode_attention_reference); a mixed batch runs ragged_paged_attention_tiled, which
walks only the chunks holding real tiles: one-row tiles for decode rows (chunks of 16) and
16-row tiles for longer query ranges (chunks of 8), each tile gathering the padded block
table once and computing all of its rows (masked or not). `fit()` calibrates the six factors
from measured step times.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from llmserve.model.config import ModelConfig
from llmserve.sim.hardware import HardwareProfile

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# ragged_paged_attention_tiled's block_q (query rows per tile) and tiles per loop chunk for
# one-row and long tiles.
_TILE_Q, _CHUNK_ONE, _CHUNK_LONG = 16, 16, 8
FACTORS = ("linear_compute", "linear_memory", "attn_compute", "attn_memory",
           "step_overhead_s", "per_seq_overhead_s")


@dataclasses.dataclass(frozen=True)
class Efficiency:
    # Defaults for a well-tuned GPU serving stack, taken as round figures before any fit:
    # large bf16 GEMMs reach ~70% of dense peak, weight streaming ~80% of HBM bandwidth,
    # paged attention ~50% of peak / ~70% of bandwidth; ~0.5 ms of launch and host work per
    # step plus ~2 us per sequence for building its metadata.
    linear_compute: float = 0.70
    linear_memory: float = 0.80
    attn_compute: float = 0.50
    attn_memory: float = 0.70
    step_overhead_s: float = 5e-4
    per_seq_overhead_s: float = 2e-6

    def __post_init__(self):
        for f in FACTORS[:4]:
            v = getattr(self, f)
            if not v > 0:
                raise ValueError(f"cost model efficiency {f} must be > 0, got {v}")
        for f in FACTORS[4:]:
            if getattr(self, f) < 0:
                raise ValueError(f"cost model {f} must be >= 0, got {getattr(self, f)}")


class CostModel:
    def __init__(self, model: ModelConfig, hardware: HardwareProfile,
                 efficiency: Efficiency | None = None, buckets=None, block_size: int = 16,
                 tp: int = 1):
        self.model = model
        self.tp = tp
        self.hardware = hardware
        # A fitted hardware profile carries its own factors (sim/hardware.py).
        self.efficiency = efficiency or Efficiency(**dict(hardware.efficiency))
        self.buckets = buckets
        self.block_size = block_size
        m = model
        self.dtype_bytes = _DTYPE_BYTES[m.dtype]
        h, i, L = m.hidden_size, m.intermediate_size, m.num_layers
        layer_params = h * (m.q_size + 2 * m.kv_size) + m.q_size * h + 3 * h * i
        self.linear_flops_per_token = 2.0 * L * layer_params
        self.head_flops_per_row = 2.0 * h * m.vocab_size
        self.weight_bytes = float(m.num_params() * self.dtype_bytes)
        # Activations in and out of each linear layer, per token.
        acts = (h + m.q_size + 2 * m.kv_size) + (m.q_size + h) + (h + 2 * i) + (i + h)
        self.act_bytes_per_token = float(L * acts * self.dtype_bytes)
        self.attn_flops_per_pair = 4.0 * L * m.num_heads * m.head_dim
        self.kv_bytes_per_token = float(2 * L * m.kv_size * self.dtype_bytes)
        if tp != 1:
            self._split_for_tp(tp)
        self._set_rates()

    def _split_for_tp(self, tp: int):
        """Tensor parallelism (model/sharding.py's Megatron split): the figures become one
        device's; the tp devices run in lockstep, so a step takes one device's time plus the
        two all-reduces of the hidden state per layer (after o_proj and down_proj)."""
        m, hw = self.model, self.hardware
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise ValueError(f"cost model tp must be a positive int, got {tp!r}")
        for name in ("num_heads", "num_kv_heads", "intermediate_size"):
            if getattr(m, name) % tp:
                raise ValueError(f"cost model tp={tp} must divide the model's {name} "
                                 f"({getattr(m, name)})")
        if tp > 1 and not hw.link_bandwidth > 0:
            raise ValueError(f"cost model tp={tp} needs hardware {hw.name!r} to have a "
                             f"link_bandwidth (device-to-device), got {hw.link_bandwidth}")
        h, i, L = m.hidden_size, m.intermediate_size, m.num_layers
        # Embedding and norms replicated; layer matrices and an untied LM head split.
        head = 0 if m.tie_word_embeddings else m.vocab_size * h
        split = self.linear_flops_per_token / 2 + head
        self.weight_bytes -= split * (1 - 1 / tp) * self.dtype_bytes
        self.linear_flops_per_token /= tp
        if head:
            self.head_flops_per_row /= tp
        self.attn_flops_per_pair /= tp
        self.kv_bytes_per_token /= tp
        # The four layer inputs of width h are whole on every device, the rest split.
        self.act_bytes_per_token = float(
            L * (4 * h + (2 * m.q_size + 2 * m.kv_size + 3 * i) / tp) * self.dtype_bytes)
        # Ring all-reduce of a [tokens, h] tensor: 2(tp-1) hops, each moving 1/tp of it.
        hops = 2 * (tp - 1)
        self._allreduce = (2 * L * hops / tp * h * self.dtype_bytes / hw.link_bandwidth,
                           2 * L * hops * hw.link_latency_s)

    def allreduce_time(self, tokens: int) -> float:
        """Seconds of one step's all-reduces over `tokens` rows (0 without tensor parallelism)."""
        if self.tp == 1:
            return 0.0
        per_token, fixed = self._allreduce
        return fixed + per_token * tokens

    def _set_rates(self):
        e, hw = self.efficiency, self.hardware
        self._inv = (1.0 / (hw.peak_flops * e.linear_compute),
                     1.0 / (hw.mem_bandwidth * e.linear_memory),
                     1.0 / (hw.peak_flops * e.attn_compute),
                     1.0 / (hw.mem_bandwidth * e.attn_memory))
        self._overhead = (float(e.step_overhead_s), float(e.per_seq_overhead_s))

    def with_efficiency(self, efficiency: Efficiency) -> CostModel:
        return CostModel(self.model, self.hardware, efficiency, self.buckets, self.block_size,
                         self.tp)

    # ---- counting -------------------------------------------------------------------------------
    def counts(self, sched_out, sampled: dict | None = None,
               token: int = 0) -> tuple[float, float, float, float, int]:
        """(linear FLOPs, linear bytes, attention FLOPs, attention bytes, sequences).

        sampled: a dict that gets {req_id: token} for each sampling request, filled in the
        same pass (the SimRunner's output; a second pass was a visible cost per step)."""
        tokens = pairs = ctx = 0
        samples = pad = 0
        one_row_tiles = long_tiles = 0
        scheduled = sched_out.scheduled
        for s in scheduled:
            q = len(s.token_ids)
            c = s.start_pos + q
            p = s.num_padding_tokens
            if q == 1 and not p:        # a decode row, the common case: the branch below
                one_row_tiles += 1
                tokens += 1
                pairs += c
            else:
                if q + p == 1:
                    one_row_tiles += 1
                else:
                    long_tiles += -(-(q + p) // _TILE_Q)
                if p:
                    tokens += q + p
                    pad += p
                    pairs += (q + p) * c - (q * (q - 1) >> 1)
                else:
                    tokens += q
                    pairs += q * c - (q * (q - 1) >> 1)
            ctx += c
            if s.sample:
                samples += 1
                if sampled is not None:
                    sampled[s.req_id] = token
        nseq = len(scheduled)
        extra = sched_out.num_padding_tokens - pad     # padding not attributed to a request
        if extra > 0 and nseq:
            tokens += extra
            pairs += extra * ctx / nseq
        kv_read = ctx
        if self.buckets is not None and nseq:
            max_blocks = max(len(s.block_ids) for s in scheduled)
            try:
                t_pad, s_pad, b_pad = self.buckets.pick(tokens, nseq, max_blocks)
            except ValueError:      # static padding beyond the largest bucket: count as is
                t_pad, s_pad, b_pad = tokens, nseq, max_blocks
            ctx_pad = b_pad * self.block_size
            if t_pad == s_pad and tokens == nseq:   # the runner's decode_only flag
                pairs = kv_read = s_pad * ctx_pad
            else:
                one_row = -(-one_row_tiles // _CHUNK_ONE) * _CHUNK_ONE
                long = -(-long_tiles // _CHUNK_LONG) * _CHUNK_LONG
                pairs = (one_row + long * _TILE_Q) * ctx_pad
                kv_read = (one_row + long) * ctx_pad
            tokens, samples = t_pad, s_pad
        return self.counts_from_sums(tokens, samples, pairs, kv_read, nseq)

    def decode_counts(self, nseq: int, context: int) -> tuple[float, float, float, float, int]:
        """counts() of a step of nseq one-token decode rows (no padding) whose contexts, the
        new token included, add up to `context`: the same figures, without the pass over the
        rows (the simulator's runs of decode steps). Only without buckets."""
        return self.counts_from_sums(nseq, nseq, context, context, nseq)

    def counts_from_sums(self, tokens: int, samples: int, pairs: int, kv_read: int,
                         nseq: int) -> tuple[float, float, float, float, int]:
        """counts() from a step's sums over its rows: tokens computed, rows sampling, causal
        query-key pairs, cached tokens read, sequences. The one place counts become FLOPs
        and bytes: counts() and a decode run's steps must agree to the last bit."""
        return (tokens * self.linear_flops_per_token + samples * self.head_flops_per_row,
                self.weight_bytes + tokens * self.act_bytes_per_token,
                pairs * self.attn_flops_per_pair,
                (kv_read + tokens) * self.kv_bytes_per_token,
                nseq)

    def time_from_counts(self, c) -> float:
        a, b, d, f = self._inv
        step_s, seq_s = self._overhead
        lin_f, lin_b, att_f, att_b, nseq = c
        # Linear bytes are weights + tokens x activations: the step's (padded) token count
        # comes back from them, so the counts tuple (fit(), MFU) keeps its five entries.
        comm = (0.0 if self.tp == 1 else
                self.allreduce_time((lin_b - self.weight_bytes) / self.act_bytes_per_token))
        lin_f *= a
        lin_b *= b
        att_f *= d
        att_b *= f
        return (step_s + seq_s * nseq + (lin_f if lin_f > lin_b else lin_b)
                + (att_f if att_f > att_b else att_b) + comm)

    def step_time(self, sched_out) -> float:
        return self.time_from_counts(self.counts(sched_out))

    # ---- memory ---------------------------------------------------------------------------------
    def num_kv_blocks(self, block_size: int, memory_utilization: float = 0.9,
                      activation_reserve_bytes: float = 4e9) -> int:
        """KV blocks that fit in the memory left after the weights (and a reserve for
        activations), as vLLM sizes its pool from gpu_memory_utilization."""
        free = (self.hardware.memory_bytes * memory_utilization - self.weight_bytes
                - activation_reserve_bytes)
        n = int(free // (self.kv_bytes_per_token * block_size))
        if n < 1:
            raise ValueError(f"model {self.weight_bytes / 1e9:.1f} GB does not leave room for a "
                             f"KV cache on {self.hardware.name}")
        return n

    # ---- calibration ----------------------------------------------------------------------------
    def fit(self, counts: list, times: list, restarts: int = 8, seed: int = 0,
            match_total: bool = True):
        """Efficiency factors minimising the relative squared error of predicted step times.

        counts: `self.counts(sched_out)` of each measured step; times: its measured seconds.
        match_total: then scale every term by one factor so the predicted steps add up to the
        measured total. With noisy times (a shared CPU) the relative-error optimum sits below
        the mean of each shape (overestimating a short step costs more than underestimating
        a long one), ~14% low in total on this machine, and a simulation's throughput and
        latencies integrate step times, so the total is what must be unbiased. Noise-free
        data gives a scale of 1.
        Returns (fitted CostModel, report dict with the mean/max relative error).
        """
        from scipy.optimize import least_squares

        c = np.asarray(counts, float)
        t = np.asarray(times, float)
        if len(c) < len(FACTORS) or len(c) != len(t):
            raise ValueError(f"fit needs >= {len(FACTORS)} (counts, time) pairs of equal "
                             f"length, got {len(c)} and {len(t)}")
        if (t <= 0).any():
            raise ValueError("fit: measured step times must be > 0")
        hw = self.hardware
        # x = seconds per unit of each term; positive, fitted in log space.
        cols = [c[:, 0] / hw.peak_flops, c[:, 1] / hw.mem_bandwidth, c[:, 2] / hw.peak_flops,
                c[:, 3] / hw.mem_bandwidth]

        def predict(x):
            return (x[4] + x[5] * c[:, 4] + np.maximum(cols[0] * x[0], cols[1] * x[1])
                    + np.maximum(cols[2] * x[2], cols[3] * x[3]))

        def resid(logx):
            return predict(np.exp(logx)) / t - 1.0

        e = self.efficiency
        x0 = np.array([1 / e.linear_compute, 1 / e.linear_memory, 1 / e.attn_compute,
                       1 / e.attn_memory, max(e.step_overhead_s, 1e-6),
                       max(e.per_seq_overhead_s, 1e-9)])
        rng = np.random.default_rng(seed)
        best = None
        for k in range(restarts):
            start = np.log(x0) + (rng.normal(0, 2.0, 6) if k else 0.0)
            r = least_squares(resid, start, method="trf", bounds=(-40, 40))
            if best is None or r.cost < best.cost:
                best = r
        x = np.exp(best.x)
        # Every term is linear in x, so scaling x scales each prediction by the same factor.
        scale = float(t.sum() / predict(x).sum()) if match_total else 1.0
        x = x * scale
        fitted = Efficiency(1 / x[0], 1 / x[1], 1 / x[2], 1 / x[3], float(x[4]), float(x[5]))
        rel = np.abs(predict(x) / t - 1.0)
        return self.with_efficiency(fitted), {
            "num_steps": len(t), "mean_abs_rel_error": float(rel.mean()),
            "p90_abs_rel_error": float(np.percentile(rel, 90)),
            "total_time_scale": scale,
            "efficiency": dataclasses.asdict(fitted)}
