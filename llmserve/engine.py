"""LLMEngine (add_request / abort / step) and the offline LLM.generate API."""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
import time
from collections.abc import Sequence

from llmserve.config import SCHEDULER_KNOBS, EngineConfig
from llmserve.core.request import Request
from llmserve.core.sched_output import RunnerOutput
from llmserve.core.scheduler import create_scheduler
from llmserve.outputs import RequestOutput
from llmserve.sampling_params import SamplingParams
from llmserve.tokenizer import decode_continuation
from llmserve.validation import validate_request


def _resolve_model(config: EngineConfig):
    """-> (ModelConfig, params, tokenizer, checkpoint dir / GGUF file, or None for a preset)."""
    import jax.numpy as jnp  # noqa: F401  (keeps jax import out of module import time)
    from llmserve.model.config import get_preset
    from llmserve.model.gguf_loader import resolve_checkpoint
    from llmserve.model.params import init_params
    from llmserve.tokenizer import load_tokenizer

    path = resolve_checkpoint(config.model)  # a directory, a .gguf file, a packaged name
    if config.load_format == "safetensors" and (path is None or not os.path.isdir(path)):
        raise ValueError(f"model {config.model!r} is not a directory; load_format='safetensors' "
                         "needs a checkpoint directory (a GGUF file loads with 'auto')")
    if path is not None:
        from llmserve.model import loader
        cfg = loader.load_config(path)
    else:
        cfg = get_preset(config.model)
    if config.dtype != "auto":
        cfg = cfg.replace(dtype=config.dtype)
    if path is not None and config.load_format != "dummy":
        params = loader.load_params(path, cfg)
    else:
        params = init_params(cfg, config.seed)
    return cfg, params, load_tokenizer(path, cfg), path


class LLMEngine:
    def __init__(self, config: EngineConfig, runner=None, model=None, clock=time.perf_counter):
        """runner/model injection lets tests and the simulator reuse the same engine loop;
        model = (ModelConfig, params, tokenizer) skips loading."""
        self.config = config
        self.clock = clock
        if model is None:
            self.model_config, params, self.tokenizer, _ = _resolve_model(config)
        else:
            self.model_config, params, self.tokenizer = model
        mc = self.model_config
        self.kv_plan = self._plan_kv(simulated=runner is not None)
        config = self.config = config.replace(max_model_len=self.kv_plan.max_model_len)
        num_blocks = self.kv_plan.num_blocks
        self.scheduler = create_scheduler(config.scheduler_config(num_blocks))
        if runner is None:
            from llmserve.runner.jax_runner import JaxRunner
            runner = JaxRunner(params, mc, num_kv_blocks=num_blocks, block_size=config.block_size,
                               max_num_seqs=config.max_num_seqs,
                               max_num_batched_tokens=config.max_num_batched_tokens,
                               max_model_len=config.max_model_len,
                               attention_impl=config.attention_impl,
                               tensor_parallel_size=config.tensor_parallel_size)
            if config.warmup:
                self._warmup(runner)
        self.runner = runner
        self._counter = itertools.count()
        # Requests aborted because a step failed on them: id -> the cause (RequestOutput.error).
        self.errors: dict[str, str] = {}
        self._failed_now: list[Request] = []
        self.step_times: list[float] = []
        self._trace_log = None
        if config.trace_log:
            from llmserve.workload.trace_log import TraceLogWriter
            self._trace_log = TraceLogWriter(config.trace_log)

    @staticmethod
    def _warmup(runner):
        """Compile, before the first request, every token-count shape at the smallest
        block-table bucket: what requests with short contexts hit. Compiling every bucket
        would take minutes on a real model (30 layers: seconds a shape); longer contexts
        compile on first use."""
        b = runner.buckets
        shapes = [s for s in b.all_shapes() if s[2] == b.block_buckets[0]]
        t0 = time.perf_counter()
        runner.warmup(shapes)
        logging.getLogger("llmserve").info("warmup: compiled %d step shapes in %.1f s",
                                           len(shapes), time.perf_counter() - t0)

    def _plan_kv(self, simulated: bool):
        """Blocks and max_model_len from the model and the memory (runner/kv_sizing.py). An
        injected runner (simulator, mock) has no device of its own: its default budget is a
        fixed 1 GiB, so simulated results do not depend on the host they run on."""
        from llmserve.model.kv_cache import kv_bytes_per_block
        from llmserve.runner import kv_sizing
        c, mc = self.config, self.model_config
        if simulated:
            budget = (c.kv_cache_memory_bytes or kv_sizing.GIB, "simulated runner")
        else:
            budget = kv_sizing.kv_budget(
                kv_cache_memory_bytes=c.kv_cache_memory_bytes,
                memory_utilization=c.memory_utilization,
                cpu_kv_cache_max_bytes=c.cpu_kv_cache_max_bytes,
                reserve_bytes=kv_sizing.activation_reserve_bytes(mc, c.max_num_batched_tokens))
        # Tensor parallelism splits each block over the devices; budgets are per device.
        plan = kv_sizing.plan_kv(
            block_bytes=kv_bytes_per_block(mc, c.block_size) // c.tensor_parallel_size,
            block_size=c.block_size, max_num_seqs=c.max_num_seqs,
            max_num_batched_tokens=c.max_num_batched_tokens,
            chunked_prefill=c.scheduler_config(1).chunked_prefill,
            model_max_len=mc.max_position_embeddings, max_model_len=c.max_model_len,
            num_kv_blocks=c.num_kv_blocks, budget_bytes=budget[0], source=budget[1])
        if not simulated:
            logging.getLogger("llmserve").info(plan.describe(c.block_size))
        return plan

    # ---- requests ----------------------------------------------------------------------------
    def validate(self, prompt, sp: SamplingParams) -> tuple[list[int], str | None]:
        """-> (prompt ids, prompt text or None); ValueError naming the field (validation.py)."""
        return validate_request(prompt, sp, tokenizer=self.tokenizer,
                                vocab_size=self.model_config.vocab_size,
                                max_model_len=self.config.max_model_len)

    def add_request(self, prompt, sampling_params: SamplingParams | None = None,
                    request_id: str | None = None, arrival_time: float | None = None) -> str:
        """Queue a request. Bad input raises ValueError and changes nothing."""
        sp = sampling_params if sampling_params is not None else SamplingParams()
        ids, text = self.validate(prompt, sp)
        n = next(self._counter)
        rid = request_id if request_id is not None else str(n)
        if rid in self.scheduler.requests:
            raise ValueError(f"request_id {rid!r} is already in use")
        # Default seed: engine seed and request index, so reruns reproduce.
        seed = (self.config.seed * 1_000_003 + n) % 2**32
        req = Request(rid, ids, sp, self.clock() if arrival_time is None else arrival_time,
                      self.model_config.eos_token_ids, seed=seed, prompt_text=text)
        self.scheduler.add_request(req)
        return rid

    def abort(self, request_id: str) -> RequestOutput | None:
        req = self.scheduler.abort(request_id, self.clock())
        if req is not None and self._trace_log is not None:
            self._log_finished([req])
        return None if req is None else self._output(req)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        """One scheduler decision, executed, applied. Returns outputs of requests that advanced."""
        return [self._output(r) for r in self.step_requests()]

    def step_requests(self) -> list[Request]:
        """step() without building RequestOutputs: the replay driver reads the Request objects
        directly, since building outputs for every request every step dominates a simulation."""
        t0 = self.clock()
        sched_out = self.scheduler.schedule(t0)
        if not sched_out.scheduled:
            return []
        try:
            runner_out = self.runner.execute(sched_out)
        except Exception as e:
            runner_out = self._isolate(sched_out, e)
        now = self.clock()
        self.step_times.append(now - t0)
        changed = self.scheduler.update_from_output(sched_out, runner_out, now)
        if self._failed_now:
            changed = self._failed_now + changed
            self._failed_now = []
        if self._trace_log is not None:
            self._log_finished(changed)
        return changed

    # ---- a failed step ------------------------------------------------------------------------
    def _isolate(self, sched_out, err: Exception) -> RunnerOutput:
        """The step raised: find the request(s) it fails on by running the step's requests
        again in halves, abort only those (with the cause), and return the others' results,
        which are what the full step would have given (sampling is keyed per request, and a
        re-run writes the same KV to the same slots). Requests stay scheduled for
        update_from_output, which skips the aborted ones."""
        log = logging.getLogger("llmserve")
        log.warning("engine step %d failed (%s: %s); isolating the request(s) that cause it",
                    sched_out.step_id, type(err).__name__, err)
        lost = getattr(self.runner, "kv_cache_lost", None)
        outs: list[RunnerOutput] = []

        def run(part: list, e: Exception | None) -> None:
            if e is None:
                try:
                    outs.append(self.runner.execute(_subset(sched_out, part)))
                    return
                except Exception as e2:
                    e = e2
            if lost is not None and lost():
                raise _KVLost(e)
            if len(part) == 1:
                self._fail(part[0].req_id, f"the engine step failed on this request: "
                                           f"{type(e).__name__}: {e}")
                return
            mid = len(part) // 2
            run(part[:mid], None)
            run(part[mid:], None)

        try:
            run(list(sched_out.scheduled), err)
        except _KVLost as kl:
            # The failure consumed the donated KV cache (an error on the device): every
            # running request's context is gone, so none can be re-run to find the culprit.
            e = kl.args[0]
            for rid in [r.request_id for r in self.scheduler.running]:
                self._fail(rid, f"the engine step failed on the device and its KV cache was "
                                f"lost ({type(e).__name__}: {e}); every running request "
                                "was aborted")
            self.scheduler.block_manager.forget_cached_prefixes()
            return RunnerOutput({})
        merged = RunnerOutput({})
        for o in outs:
            merged.sampled.update(o.sampled)
            merged.logprobs.update(o.logprobs)
            merged.top_logprobs.update(o.top_logprobs)
            merged.prompt_logprobs.update(o.prompt_logprobs)
            merged.step_time_s += o.step_time_s
        return merged

    def _fail(self, request_id: str, message: str) -> None:
        req = self.scheduler.abort(request_id, self.clock())
        if req is not None:
            logging.getLogger("llmserve").error("request %s aborted: %s", request_id, message)
            self.errors[request_id] = message
            self._failed_now.append(req)

    def _log_finished(self, requests) -> None:
        from llmserve.workload.trace_log import record_from_request
        for r in requests:
            if r.is_finished:
                self._trace_log.write(record_from_request(r))

    def _output(self, req: Request) -> RequestOutput:
        text = None
        if req.is_finished and self.tokenizer is not None:
            text = decode_continuation(self.tokenizer, req.prompt_token_ids,
                                       req.output_token_ids)
        out = RequestOutput.from_request(req, text)
        if req.is_finished and self.errors:
            out.error = self.errors.pop(req.request_id, None)
        return out


class _KVLost(Exception):
    """A failed step took the runner's KV cache with it."""


def _subset(sched_out, part: list):
    """The SchedulerOutput of some of a step's requests (a failed step's re-run)."""
    return dataclasses.replace(
        sched_out, scheduled=part, num_scheduled_tokens=sum(len(r.token_ids) for r in part),
        num_padding_tokens=sum(r.num_padding_tokens for r in part), preempted_req_ids=[],
        finished_req_ids=[])


_LLM_KWARGS = ("dtype", "max_num_seqs", "max_num_batched_tokens", "block_size", "num_kv_blocks",
               "max_model_len", "policy", "attention_impl", "seed", "load_format",
               "tensor_parallel_size",
               "kv_cache_memory_bytes", "memory_utilization", "cpu_kv_cache_max_bytes",
               "warmup", "trace_log") + SCHEDULER_KNOBS


class LLM:
    """Offline batch generation, as in vLLM: LLM("tiny").generate(prompts, params)."""

    def __init__(self, model: str | None = None, *, config=None, **kwargs):
        unknown = sorted(set(kwargs) - set(_LLM_KWARGS))
        if unknown:
            raise ValueError(f"unknown LLM argument(s) {unknown}; expected some of {_LLM_KWARGS}")
        base = config if isinstance(config, EngineConfig) else (
            EngineConfig.from_dict(config) if config is not None else EngineConfig())
        overrides = {k: v for k, v in kwargs.items() if v is not None}
        if model is not None:
            overrides["model"] = model
        self.engine = LLMEngine(base.replace(**overrides))
        # One engine, one caller at a time: generate() from several threads queues here
        # (the engine and its donated KV cache are not safe to step from two threads).
        self._lock = threading.Lock()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def chat(self, messages, sampling_params=None,
             add_generation_prompt: bool = True) -> list[RequestOutput]:
        """Replies to conversations, as vLLM's LLM.chat: `messages` is one conversation (a list
        of {"role": ..., "content": ...}) or a list of them, each rendered with the model's chat
        template (a GGUF's tokenizer.chat_template, tokenizer_config.json's, else a plain one)."""
        from llmserve.tokenizer import chat_template_for, encode_chat
        if isinstance(messages, (list, tuple)) and messages and isinstance(messages[0], dict):
            messages = [messages]
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError("messages must be a conversation (a list of {'role', 'content'} "
                             "dicts) or a non-empty list of conversations")
        for i, conv in enumerate(messages):
            if not isinstance(conv, (list, tuple)) or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str) for m in conv):
                raise ValueError(f"conversation {i} must be a list of dicts with string 'role' "
                                 f"and 'content', got {conv!r:.120}")
        if getattr(self, "_chat_template", None) is None:
            self._chat_template = chat_template_for(self.tokenizer)
        prompts = [encode_chat(self.tokenizer, self._chat_template.render(
            list(conv), add_generation_prompt)) for conv in messages]
        return self.generate(prompts, sampling_params)

    def generate(self, prompts: str | Sequence, sampling_params=None) -> list[RequestOutput]:
        """Generate for every prompt (string or token-id list); outputs in input order.

        Every prompt is validated before any is queued, so a bad one raises ValueError and
        leaves the engine as it was. A request the engine step fails on is aborted alone: its
        output has finish_reason "abort" and `error` says why; the others are unaffected.
        Thread-safe: concurrent calls run one after another. If a call raises (Ctrl-C), its
        requests are aborted, so the next call starts clean.
        """
        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts
                                        and isinstance(prompts[0], int)) or (
                getattr(prompts, "ndim", None) == 1):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) and getattr(prompts, "ndim", None) != 2:
            raise ValueError(f"prompts must be a string, a list of token ids or a list of "
                             f"such prompts, got {type(prompts).__name__}")
        prompts = list(prompts)
        if isinstance(sampling_params, (list, tuple)):
            if len(sampling_params) != len(prompts):
                raise ValueError(f"got {len(sampling_params)} sampling_params for "
                                 f"{len(prompts)} prompts")
            sps = list(sampling_params)
        else:
            sps = [sampling_params or SamplingParams()] * len(prompts)
        for i, (p, sp) in enumerate(zip(prompts, sps)):
            try:
                self.engine.validate(p, sp)
            except ValueError as e:
                raise ValueError(f"prompt {i}: {e}") from None
        with self._lock:
            ids: list[str] = []
            done: dict[str, RequestOutput] = {}
            try:
                for p, sp in zip(prompts, sps):
                    ids.append(self.engine.add_request(p, sp))
                while len(done) < len(ids) and self.engine.has_unfinished():
                    for out in self.engine.step():
                        if out.finished:
                            done[out.request_id] = out
            finally:
                for i in ids:
                    if i not in done:
                        self.engine.abort(i)
                        self.engine.errors.pop(i, None)
        return [done[i] for i in ids]
