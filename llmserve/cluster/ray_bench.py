"""Ray replicas against one in-process engine on the same requests (offline: all submitted at
once), and the cost model's tensor-parallel step times. Behind scripts/ray_bench.py.

Every mode first runs a warm-up set of requests (same length distribution, other prompts) so
the timed run measures serving, not XLA compilation (each replica compiles on its own). The
timed runs' greedy outputs are compared with the in-process engine's: a mode that returned
other tokens would not be doing the same work.

With `kill_replica`, the last Ray mode then runs the requests once more and has replica 0
killed mid-run (`ray.kill`): how long that round takes, how long until the router's
replacement replica is ready (its warm-up compiles included), and one more round after it,
which the replacement must share.
"""
from __future__ import annotations

import os
import time

import numpy as np
from absl import logging

from llmserve.config import EngineConfig
from llmserve.metrics import report
from llmserve.sampling_params import SamplingParams

COLUMNS = (
    ("wall_s", "wall s", 1, "{:.1f}"),
    ("request_throughput", "req/s", 1, "{:.2f}"),
    ("output_throughput_tok_s", "out tok/s", 1, "{:.1f}"),
    ("ttft_p50_s", "TTFT p50 ms", 1e3, "{:.0f}"),
    ("ttft_p99_s", "TTFT p99 ms", 1e3, "{:.0f}"),
    ("e2e_p50_s", "E2E p50 s", 1, "{:.2f}"),
    ("e2e_p99_s", "E2E p99 s", 1, "{:.2f}"),
    ("compiles_in_timed_run", "compiles", 1, "{:d}"),
)
TP_COLUMNS = (
    ("decode_step_ms", "decode step ms", 1, "{:.2f}"),
    ("allreduce_share", "all-reduce share", 1, "{:.0%}"),
    ("prefill_step_ms", "prefill step ms", 1, "{:.1f}"),
    ("kv_blocks", "KV blocks", 1, "{:d}"),
)


def _workload(cfg, seed: int):
    rng = np.random.default_rng(seed)
    lens = rng.integers(cfg.prompt_len_min, cfg.prompt_len_max + 1, cfg.num_requests)
    prompts = [rng.integers(0, 256, int(n)).tolist() for n in lens]
    return prompts, SamplingParams(max_tokens=cfg.max_tokens, temperature=0.0, ignore_eos=True)


def _summary(outs, wall_s: float) -> dict:
    ttft = np.array([o.metrics.ttft for o in outs])
    e2e = np.array([o.metrics.e2e for o in outs])
    n_out = sum(len(o.token_ids) for o in outs)
    return dict(wall_s=wall_s, request_throughput=len(outs) / wall_s,
                output_throughput_tok_s=n_out / wall_s,
                ttft_p50_s=float(np.percentile(ttft, 50)),
                ttft_p99_s=float(np.percentile(ttft, 99)),
                e2e_p50_s=float(np.percentile(e2e, 50)),
                e2e_p99_s=float(np.percentile(e2e, 99)))


def run_replicas(cfg) -> dict:
    """Every mode is built and warmed up first, then the timed rounds alternate between the
    modes, so drifting load on a shared machine hits them alike; each row is a mode's best
    round (all rounds' wall times are kept in `wall_s_rounds`)."""
    from llmserve.cluster.ray_backend import RayRouter, import_ray
    ray = import_ray()
    from llmserve.engine import LLM
    ec = EngineConfig.from_dict(cfg.engine)
    prompts, sp = _workload(cfg, cfg.seed)
    llm = LLM(config=ec)
    modes = {"engine (in-process)": (llm.generate, lambda: llm.engine.runner.stats.num_compiles)}
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(num_cpus=cfg.ray_num_cpus, include_dashboard=False, logging_level="warning")
    routers, start_s = [], {}
    for n in [int(x) for x in str(cfg.replica_counts).split(",") if x]:
        name = f"ray, {n} replica{'s' if n > 1 else ''}"
        # num_cpus=0: every mode's actors stay up together (Ray's CPU count is only a
        # scheduling label here; all processes share the machine's cores).
        router = RayRouter(ec, n, cfg.policy, num_cpus_per_replica=0)
        t0 = time.perf_counter()
        router.start()
        start_s[name] = time.perf_counter() - t0
        routers.append(router)
        modes[name] = (router.generate, lambda r=router: _router_compiles(r))
    for name, (gen, _) in modes.items():
        logging.info("%s: %d warm-up round(s) of %d requests", name, cfg.warmup_rounds,
                     len(prompts))
        for _ in range(cfg.warmup_rounds):
            gen(prompts, sp)
    runs: dict = {name: [] for name in modes}
    for r in range(cfg.rounds):
        for name, (gen, compiles) in modes.items():
            n0 = compiles()
            t = time.perf_counter()
            outs = gen(prompts, sp)
            wall = time.perf_counter() - t
            runs[name].append((wall, outs, compiles() - n0))
            logging.info("round %d %s: %.2f s", r, name, wall)
    recovery = None
    if cfg.get("kill_replica", False) and routers:
        ref = [o.token_ids for o in runs["engine (in-process)"][0][1]]
        recovery = kill_and_recover(routers[-1], prompts, sp, ref)
    for router in routers:
        router.shutdown()
    ray.shutdown()
    rows = {}
    ref = [o.token_ids for o in runs["engine (in-process)"][0][1]]
    for name, rs in runs.items():
        wall, outs, _ = min(rs, key=lambda x: x[0])
        rows[name] = dict(_summary(outs, wall), wall_s_rounds=[x[0] for x in rs],
                          compiles_in_timed_run=sum(x[2] for x in rs),
                          outputs_equal_engine=all([o.token_ids for o in x[1]] == ref
                                                   for x in rs))
        if name in start_s:
            rows[name]["start_s"] = start_s[name]
    if recovery is not None:
        recovery["best_round_wall_s"] = rows[list(modes)[-1]]["wall_s"]
    return rows, recovery


def kill_and_recover(router, prompts, sp, ref) -> dict:
    """One round with replica 0 killed once it streams a request it holds, the wait for its
    replacement, and one round after (measured, not asserted: the tests assert)."""
    import threading

    import ray
    box = {}
    t0 = time.perf_counter()
    th = threading.Thread(target=lambda: box.update(outs=router.generate(prompts, sp)))
    th.start()
    while True:
        with router._lock:
            if any(f.replica == 0 and f.tokens for f in router._flights.values()):
                break
        if not th.is_alive():
            raise RuntimeError("the round ended before replica 0 streamed a token")
        time.sleep(0.005)
    rerouted0 = router.num_rerouted
    ray.kill(router.actors[0], no_restart=True)
    t_kill = time.perf_counter()
    logging.info("killed replica 0 %.2f s into the round", t_kill - t0)
    th.join()
    t_round = time.perf_counter()
    while router.status[0] != "alive":
        if router.status[0] == "dead":
            raise RuntimeError("replica 0 was not replaced (max_restarts=0?)")
        time.sleep(0.05)
    t_back = time.perf_counter()
    logging.info("replica 0 back %.1f s after the kill", t_back - t_kill)
    before = list(router.finished_per_replica)
    n0 = _router_compiles(router)
    t = time.perf_counter()
    after = router.generate(prompts, sp)
    wall_after = time.perf_counter() - t
    return dict(
        killed_round_wall_s=t_round - t0, kill_at_s=t_kill - t0,
        rerouted=router.num_rerouted - rerouted0,
        kill_to_back_s=t_back - t_kill, down_s=router.restart_log[-1]["down_s"],
        after_round_wall_s=wall_after,
        after_round_served_by_replica0=router.finished_per_replica[0] - before[0],
        after_round_compiles=_router_compiles(router) - n0,
        outputs_equal_engine=[o.token_ids for o in box["outs"]] == ref
        and [o.token_ids for o in after] == ref,
        num_replicas=router.num_replicas)


def _router_compiles(router) -> int:
    time.sleep(2 * router.poll_wait_s)      # the replicas' latest stats
    return router.stats()["num_compiles"]


def tp_cost(cfg) -> dict:
    """Cost-model step times of one replica split over tp devices (simulated, not measured)."""
    from llmserve.core.sched_output import ScheduledRequest, SchedulerOutput
    from llmserve.model.config import get_preset
    from llmserve.sim.cost_model import CostModel
    from llmserve.sim.hardware import get_hardware
    mc, hw = get_preset(cfg.tp_model), get_hardware(cfg.tp_hardware)
    b, ctx, plen = cfg.tp_decode_batch, cfg.tp_decode_context, cfg.tp_prefill_tokens

    def step(reqs):
        sch = [ScheduledRequest(str(i), [1] * q, s, [0], True, 0, (0, 0, 1, 0), 0)
               for i, (q, s) in enumerate(reqs)]
        return SchedulerOutput(1, sch, sum(q for q, _ in reqs))

    rows = {}
    for tp in [int(x) for x in str(cfg.tp_sizes).split(",") if x]:
        cm = CostModel(mc, hw, tp=tp)
        dec = cm.step_time(step([(1, ctx - 1)] * b))
        rows[f"tp={tp}"] = dict(decode_step_ms=dec * 1e3,
                                allreduce_share=cm.allreduce_time(b) / dec,
                                prefill_step_ms=cm.step_time(step([(plen, 0)])) * 1e3,
                                kv_blocks=cm.num_kv_blocks(16))
    return rows


def run(cfg) -> dict:
    out = {"config": cfg.to_dict(), "load_before": os.getloadavg()}
    if cfg.replica_counts:
        out["replicas"], recovery = run_replicas(cfg)
        if recovery is not None:
            out["replica_kill"] = recovery
    out["tp_cost_model"] = tp_cost(cfg)
    out["load_after"] = os.getloadavg()
    return out


def format_results(res: dict) -> str:
    parts = []
    if "replicas" in res:
        parts.append(f"Ray replicas vs one engine (wall clock; load average before "
                     f"{res['load_before'][0]:.1f}, after {res['load_after'][0]:.1f}):")
        tab = report.table(res["replicas"], baseline=None, columns=COLUMNS, label="mode")
        rows = list(res["replicas"].values())
        base = rows[0]["output_throughput_tok_s"]
        ratios = ", ".join(f"{k}: x{v['output_throughput_tok_s'] / base:.2f}"
                           f"{'' if v['outputs_equal_engine'] else ' (OUTPUTS DIFFER)'}"
                           for k, v in res["replicas"].items())
        parts += [tab, f"throughput vs the in-process engine: {ratios}"]
    k = res.get("replica_kill")
    if k is not None:
        parts.append(
            f"\nReplica 0 of {k['num_replicas']} killed {k['kill_at_s']:.1f} s into a round: "
            f"round {k['killed_round_wall_s']:.1f} s (best timed round "
            f"{k['best_round_wall_s']:.1f} s), {k['rerouted']} request(s) recomputed elsewhere; "
            f"replacement in routing {k['kill_to_back_s']:.1f} s after the kill; next round "
            f"{k['after_round_wall_s']:.1f} s, {k['after_round_served_by_replica0']} of its "
            f"requests served by the replacement ({k['after_round_compiles']} compiles); "
            f"outputs {'equal' if k['outputs_equal_engine'] else 'DIFFER FROM'} the engine's")
    c = res["config"]
    parts.append(f"\nTensor parallelism in the cost model ({c['tp_model']} on {c['tp_hardware']}, "
                 f"simulated): decode batch {c['tp_decode_batch']} at context "
                 f"{c['tp_decode_context']}, prefill {c['tp_prefill_tokens']} tokens")
    parts.append(report.table(res["tp_cost_model"], baseline=None, columns=TP_COLUMNS,
                              label="tp"))
    return "\n".join(parts)


def write_outputs(res: dict, workdir: str) -> dict:
    return {"json": report.write_json(os.path.join(workdir, "ray_bench.json"), res)}
