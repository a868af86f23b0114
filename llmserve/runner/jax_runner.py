"""Runs a SchedulerOutput through the JAX model: the only place lists become arrays."""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import numpy as np

from llmserve.core.sched_output import RunnerOutput, SchedulerOutput
from llmserve.model.attention import AttentionMetadata
from llmserve.model.config import ModelConfig
from llmserve.model.kv_cache import init_kv_cache
from llmserve.model.sampling import (CANDIDATE_CAPS, candidate_cap, prompt_logprobs, sample,
                                      top_logprobs)
from llmserve.model.transformer import forward
from llmserve.runner.buckets import Buckets
from llmserve.sampling_params import MAX_TOP_LOGPROBS


@dataclasses.dataclass
class RunnerStats:
    num_steps: int = 0
    device_s: float = 0.0       # dispatch of the jitted step until its tokens are on the host
    prepare_s: float = 0.0      # building the padded host batch
    padded_tokens: int = 0      # bucket padding (not scheduling padding)
    real_tokens: int = 0
    scheduling_padding_tokens: int = 0   # static batching's padding rows, computed
    compiled_shapes: set = dataclasses.field(default_factory=set)

    @property
    def num_compiles(self) -> int:
        return len(self.compiled_shapes)


# The prompt-logprobs variants of the step (with_prompt): off, each prompt row's target
# logprob only, or that plus the top MAX_TOP_LOGPROBS tokens of each row.
PROMPT_OFF, PROMPT_CHOSEN, PROMPT_TOP = 0, 1, 2


def _step_fn(params, kv_cache, batch, cfg: ModelConfig, attention_impl: str, decode_only: bool,
             attention_fn=None, with_top: bool = False, with_prompt: int = PROMPT_OFF,
             cap: int = CANDIDATE_CAPS[0]):
    md = AttentionMetadata(batch["slot_mapping"], batch["query_start_loc"], batch["seq_lens"],
                           batch["block_tables"], batch["num_seqs"], decode_only)
    if with_prompt:
        # The vocabulary projection of every row (T x V), paid only in this variant; the
        # sampled rows are read from it, and only the gathered values leave the device.
        all_logits, kv_cache = forward(params, cfg, batch["token_ids"], batch["positions"],
                                       kv_cache, md, None, attention_impl, attention_fn)
        logits = all_logits[batch["logits_indices"]]
    else:
        logits, kv_cache = forward(params, cfg, batch["token_ids"], batch["positions"],
                                   kv_cache, md, batch["logits_indices"], attention_impl,
                                   attention_fn)
    tokens, logprobs = sample(logits, batch["temperature"], batch["top_k"], batch["top_p"],
                              batch["seeds"], batch["token_index"], cap=cap)
    if with_top or with_prompt:
        # Separate static variants, compiled only once a step needs them: the default step
        # (and its transfer) stays as it was. Nested in the logprobs slot so the TP step's
        # out_shardings (tokens, logprobs, cache) still describe it as a prefix.
        extra = {"chosen": logprobs}
        if with_top:
            extra["top"] = top_logprobs(logits, MAX_TOP_LOGPROBS)
        if with_prompt:
            extra["prompt"] = prompt_logprobs(
                all_logits, batch["prompt_targets"],
                MAX_TOP_LOGPROBS if with_prompt == PROMPT_TOP else 0)
        logprobs = extra
    return tokens, logprobs, kv_cache


_step = jax.jit(_step_fn, static_argnames=("cfg", "attention_impl", "decode_only", "with_top",
                                           "with_prompt", "cap"),
                donate_argnums=(1,))


class JaxRunner:
    def __init__(self, params, cfg: ModelConfig, *, num_kv_blocks: int, block_size: int,
                 max_num_seqs: int, max_num_batched_tokens: int, max_model_len: int,
                 attention_impl: str = "reference", kv_dtype=None, tensor_parallel_size: int = 1):
        self.cfg = cfg
        self.block_size = block_size
        self.num_kv_blocks = num_kv_blocks
        self.attention_impl = attention_impl
        self.max_blocks_per_seq = -(-max_model_len // block_size)
        self.buckets = Buckets(max_num_batched_tokens, max_num_seqs, self.max_blocks_per_seq)
        self.tp = tensor_parallel_size
        # The sampler's candidate cap when no row asks for a top_k above the smallest cap.
        self.default_cap = candidate_cap((), (), cfg.vocab_size)
        self.mesh = None
        if self.tp != 1:
            # Tensor parallel: params and cache split over a "tp" mesh (model/sharding.py).
            from llmserve.model import sharding
            sharding.validate_tp(cfg, self.tp)
            self.mesh = sharding.make_mesh(self.tp)
            params = sharding.shard_params(params, self.mesh, cfg)
            self.kv_cache = sharding.init_sharded_kv_cache(self.mesh, cfg, num_kv_blocks,
                                                           block_size, kv_dtype)
            self._tp_attend = sharding.head_parallel_attention(self.mesh)
            # Every variant is built when first needed; _tp_steps names the default ones.
            self._tp_variants = {}
            self._tp_steps = {d: self._tp_step((d, False, PROMPT_OFF, self.default_cap))
                              for d in (False, True)}
        else:
            self.kv_cache = init_kv_cache(cfg, num_kv_blocks, block_size, kv_dtype)
        self.params = params
        self.stats = RunnerStats()

    def _tp_step(self, variant: tuple):
        """The jitted TP step of one (decode_only, with_top, with_prompt, cap) variant, built when
        first needed: jit takes no kwargs (the static ones) together with in_shardings, so
        they are bound first."""
        step = self._tp_variants.get(variant)
        if step is None:
            from llmserve.model import sharding
            d, w, p, cap = variant
            step = sharding.jit_sharded_step(functools.partial(
                _step_fn, cfg=self.cfg, attention_impl=self.attention_impl, decode_only=d,
                attention_fn=self._tp_attend, with_top=w, with_prompt=p, cap=cap), self.mesh,
                self.cfg)
            self._tp_variants[variant] = step
        return step

    def _run_step(self, batch, decode_only: bool, with_top: bool = False,
                  with_prompt: int = PROMPT_OFF, cap: int | None = None):
        cap = cap or self.default_cap
        if self.mesh is not None:
            step = self._tp_step((decode_only, with_top, with_prompt, cap))
            return step(self.params, self.kv_cache, batch)
        # The variant flags are passed only when set: the default variant is called exactly as
        # before, so it hits the same jit cache entry as warmup.
        extra = {}
        if with_top:
            extra["with_top"] = True
        if with_prompt:
            extra["with_prompt"] = with_prompt
        if cap != self.default_cap:
            extra["cap"] = cap
        return _step(self.params, self.kv_cache, batch, cfg=self.cfg,
                     attention_impl=self.attention_impl, decode_only=decode_only, **extra)

    @staticmethod
    def _prompt_rows(sched_out: SchedulerOutput, batch: dict) -> list[tuple]:
        """Requests with prompt_logprobs whose rows this step include prompt positions that a
        prompt token follows: (req_id, first row, first position, row count, k). Writes each
        row's target (the next prompt token) into batch["prompt_targets"] when any."""
        rows = []
        targets = None
        qsl = batch["query_start_loc"]
        for i, r in enumerate(sched_out.scheduled):
            k, prompt, count = r.prompt_logprob_rows()
            if count <= 0:
                continue
            p0 = r.start_pos
            if targets is None:
                targets = batch["prompt_targets"] = np.zeros(batch["token_ids"].shape[0],
                                                             np.int32)
            off = int(qsl[i])
            targets[off:off + count] = prompt[p0 + 1:p0 + 1 + count]
            rows.append((r.req_id, off, p0, count, k))
        return rows

    # ---- host side -------------------------------------------------------------------------
    def _empty_batch(self, T: int, S: int, B: int, n_tok: int) -> dict:
        """Host arrays of one bucket shape, all rows padding: tokens write to the pad slot
        (dropped), sequences are empty ranges at n_tok with length 0, greedy sampling."""
        return dict(
            token_ids=np.zeros(T, np.int32), positions=np.zeros(T, np.int32),
            slot_mapping=np.full(T, self.num_kv_blocks * self.block_size, np.int32),
            query_start_loc=np.full(S + 1, n_tok, np.int32), seq_lens=np.zeros(S, np.int32),
            block_tables=np.zeros((S, B), np.int32), num_seqs=np.int32(0),
            logits_indices=np.zeros(S, np.int32), temperature=np.zeros(S, np.float32),
            top_k=np.zeros(S, np.int32), top_p=np.ones(S, np.float32),
            seeds=np.zeros(S, np.uint32), token_index=np.zeros(S, np.int32))

    def prepare(self, sched_out: SchedulerOutput) -> tuple[dict, tuple]:
        reqs = sched_out.scheduled
        # Static batching's padding rows are computed too (see core/sched_output.py).
        n_tok = sched_out.num_scheduled_tokens + sched_out.num_padding_tokens
        max_blocks = max(len(r.block_ids) for r in reqs)
        if sched_out.num_padding_tokens:
            ctx = max(r.start_pos + len(r.token_ids) + r.num_padding_tokens for r in reqs)
            max_blocks = min(max(max_blocks, -(-ctx // self.block_size)),
                             self.max_blocks_per_seq)
        T, S, B = self.buckets.pick(n_tok, len(reqs), max_blocks)
        bs = self.block_size
        batch = self._empty_batch(T, S, B, n_tok)
        batch["num_seqs"] = np.int32(len(reqs))
        token_ids, positions, slots = (batch[k] for k in
                                       ("token_ids", "positions", "slot_mapping"))
        qsl, seq_lens, tables, logits_idx = (batch[k] for k in (
            "query_start_loc", "seq_lens", "block_tables", "logits_indices"))
        temperature, top_k, top_p, seeds, token_index = (batch[k] for k in (
            "temperature", "top_k", "top_p", "seeds", "token_index"))
        off = 0
        for i, r in enumerate(reqs):
            n = len(r.token_ids)
            end = off + n
            token_ids[off:end] = r.token_ids
            pos = np.arange(r.start_pos, r.start_pos + n, dtype=np.int32)
            positions[off:end] = pos
            blocks = np.asarray(r.block_ids, np.int32)
            slots[off:end] = blocks[pos // bs] * bs + pos % bs
            qsl[i] = off
            seq_lens[i] = r.start_pos + n
            tables[i, :len(blocks)] = blocks
            logits_idx[i] = max(end - 1, off)
            temperature[i], top_k[i], top_p[i], seeds[i] = r.sampling[:4]
            token_index[i] = r.token_index
            npad = r.num_padding_tokens
            if npad:
                # Dummy rows after the real ones, in the same sequence: they attend over its
                # context like padded positions do, write to the pad slot, sample nothing.
                last = self.max_blocks_per_seq * bs - 1
                positions[end:end + npad] = np.minimum(
                    np.arange(r.start_pos + n, r.start_pos + n + npad, dtype=np.int32), last)
                seq_lens[i] += npad
                end += npad
            off = end
        # One query row per sequence, row i = sequence i: the decode kernel can take it.
        decode_only = (T == S and n_tok == len(reqs))
        return batch, (T, S, B, decode_only)

    # ---- device side -----------------------------------------------------------------------
    def execute(self, sched_out: SchedulerOutput) -> RunnerOutput:
        if sched_out.is_empty:
            return RunnerOutput({}, {}, 0.0)
        t0 = time.perf_counter()
        batch, shape = self.prepare(sched_out)
        t1 = time.perf_counter()
        # Requests asking for alternatives: (index in the batch, how many).
        want_top = [(i, r.sampling[4]) for i, r in enumerate(sched_out.scheduled)
                    if r.sample and len(r.sampling) > 4 and r.sampling[4]]
        prompt_rows = self._prompt_rows(sched_out, batch)
        with_prompt = PROMPT_OFF if not prompt_rows else (
            PROMPT_TOP if any(k for *_, k in prompt_rows) else PROMPT_CHOSEN)
        # A larger candidate cap (another static variant) only when a row's top_k needs it;
        # padding rows are greedy, so they never do.
        cap = candidate_cap(batch["temperature"], batch["top_k"], self.cfg.vocab_size)
        tokens, logprobs, self.kv_cache = self._run_step(batch, shape[3], bool(want_top),
                                                         with_prompt, cap)
        tokens, logprobs = jax.device_get((tokens, logprobs))   # one transfer
        extra = None
        if want_top or with_prompt:
            extra, logprobs = logprobs, logprobs["chosen"]
        t2 = time.perf_counter()
        st = self.stats
        st.num_steps += 1
        st.prepare_s += t1 - t0
        st.device_s += t2 - t1
        st.real_tokens += sched_out.num_scheduled_tokens
        st.scheduling_padding_tokens += sched_out.num_padding_tokens
        st.padded_tokens += shape[0] - sched_out.num_computed_slots
        tags = (("top",) if want_top else ()) + (
            ("prompt", "prompt_top" if with_prompt == PROMPT_TOP else "prompt_chosen")
            if with_prompt else ()) + ((("cap", cap),) if cap != self.default_cap else ())
        st.compiled_shapes.add(shape + tags)
        sampled, lps = {}, {}
        for i, r in enumerate(sched_out.scheduled):
            if r.sample:
                sampled[r.req_id] = int(tokens[i])
                lps[r.req_id] = float(logprobs[i])
        tops = {}
        if want_top:
            top_ids, top_lps = extra["top"]
            for i, n in want_top:
                tops[sched_out.scheduled[i].req_id] = list(zip(top_ids[i, :n].tolist(),
                                                               top_lps[i, :n].tolist()))
        plps = {}
        if with_prompt:
            got = extra["prompt"]
            for rid, off, p0, count, k in prompt_rows:
                alts = None
                if k:
                    ids, vals = got[1][off:off + count, :k], got[2][off:off + count, :k]
                    alts = [list(zip(a, b)) for a, b in zip(ids.tolist(), vals.tolist())]
                plps[rid] = (p0, got[0][off:off + count].tolist(), alts)
        return RunnerOutput(sampled, lps, t2 - t0, tops, plps)

    def warmup(self, shapes=None) -> int:
        """Compile every bucket shape (or the given ones) ahead of serving. Returns the count."""
        shapes = shapes or self.buckets.all_shapes()
        for T, S, B, decode_only in shapes:
            batch = self._empty_batch(T, S, B, 0)
            out = self._run_step(batch, decode_only)
            self.kv_cache = out[2]
            jax.block_until_ready(out[0])
            self.stats.compiled_shapes.add((T, S, B, decode_only))
        return len(shapes)

    def kv_cache_lost(self) -> bool:
        """After a failed execute(): True if the failure consumed the donated KV cache (an
        error while the step ran deletes it, or leaves it in the failed outputs); a zeroed
        cache of the same shapes then takes its place. False: it is intact (the step failed
        before it ran), so the step's requests can be re-run."""
        leaves = jax.tree.leaves(self.kv_cache)
        try:
            if not any(x.is_deleted() for x in leaves):
                jax.block_until_ready(leaves)
                return False
        except Exception:  # the step's error, raised again by its output arrays
            pass
        self.kv_cache = jax.tree.map(
            lambda x: jax.numpy.zeros(x.shape, x.dtype, device=x.sharding), self.kv_cache)
        return True

    @staticmethod
    def jit_cache_size() -> int:
        """Executables jax compiled for the step function (all runners in the process)."""
        return _step._cache_size()
