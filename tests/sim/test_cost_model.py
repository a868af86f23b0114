"""Cost model: counts against hand-computed FLOPs/bytes, roofline regimes, fit() recovering
known factors, KV pool sizing, and the SimRunner contract."""
import numpy as np
import pytest

from llmserve.core.sched_output import ScheduledRequest, SchedulerOutput
from llmserve.model.config import ModelConfig, get_preset
from llmserve.runner.sim_runner import SimRunner
from llmserve.sim.cost_model import CostModel, Efficiency
from llmserve.sim.hardware import HardwareProfile, get_hardware

# h=4, i=8, L=2, 2 heads of dim 2 (q_size 4), 1 kv head (kv_size 2), vocab 10, fp32.
TOY = ModelConfig(vocab_size=10, hidden_size=4, intermediate_size=8, num_layers=2, num_heads=2,
                  num_kv_heads=1, head_dim=2)
UNIT = HardwareProfile("unit", 1e9, 1e9, 1e12)
EXACT = Efficiency(1, 1, 1, 1, 0.0, 0.0)


def _so(reqs, pad=0):
    """reqs: (new tokens, start_pos, sample, padding)."""
    sch = [ScheduledRequest(str(i), [1] * q, start, [0], sample, 0, (0, 0, 1, 0), p)
           for i, (q, start, sample, p) in enumerate(reqs)]
    return SchedulerOutput(1, sch, sum(r[0] for r in reqs), num_padding_tokens=pad)


def test_counts_by_hand():
    cm = CostModel(TOY, UNIT, EXACT)
    # per layer: q,k,v = 4*(4+2+2) = 32, o = 16, mlp = 3*4*8 = 96 -> 144 params, 2 layers
    assert cm.linear_flops_per_token == 2 * 2 * 144
    # a 3-token prompt chunk from position 2 (sampling) + a decode at position 9
    lin_f, lin_b, att_f, att_b, nseq = cm.counts(_so([(3, 2, True, 0), (1, 9, True, 0)]))
    assert lin_f == 4 * 576 + 2 * (2 * 4 * 10)
    # causal pairs: chunk 3*5 - 3 = 12, decode 1*10 = 10; 4 * L * heads * dim = 32 per pair
    assert att_f == 22 * 32
    # KV: read 5 + 10 cached tokens, write 4, 2 (k, v) * L * kv_size * 4 bytes = 32 per token
    assert att_b == (15 + 4) * 32
    assert lin_b == TOY.num_params() * 4 + 4 * cm.act_bytes_per_token
    assert nseq == 2
    t = cm.step_time(_so([(3, 2, True, 0), (1, 9, True, 0)]))
    assert t == pytest.approx((max(lin_f, lin_b) + max(att_f, att_b)) / 1e9)


def test_padding_rows_cost_like_tokens():
    cm = CostModel(TOY, UNIT, EXACT)
    real = cm.counts(_so([(1, 9, True, 0), (1, 9, True, 0)]))
    padded = cm.counts(_so([(1, 9, True, 0), (0, 10, False, 1)], pad=1))
    assert padded[0] == real[0] - 2 * 4 * 10      # same rows, one fewer LM-head row
    assert padded[2] == real[2]


def test_decode_is_memory_bound_and_prefill_compute_bound_on_h100():
    cm = CostModel(get_preset("llama3-8b"), get_hardware("h100-80gb"))
    e, hw = cm.efficiency, cm.hardware
    decode = cm.step_time(_so([(1, 500, True, 0)]))
    weights_s = cm.weight_bytes / (hw.mem_bandwidth * e.linear_memory)
    assert decode == pytest.approx(weights_s + e.step_overhead_s + e.per_seq_overhead_s, rel=0.02)
    assert 5e-3 < decode < 8e-3      # ~16 GB of bf16 weights at ~2.7 TB/s
    prefill = cm.step_time(_so([(2048, 0, True, 0)]))
    flops_s = 2048 * cm.linear_flops_per_token / (hw.peak_flops * e.linear_compute)
    assert prefill > flops_s > weights_s


def test_kv_pool_size_by_hand():
    mc = get_preset("llama3-8b")
    cm = CostModel(mc, get_hardware("h100-80gb"))
    per_block = 2 * 32 * 8 * 128 * 2 * 16           # K and V, 32 layers, 8 kv heads, bf16
    free = 80e9 * 0.9 - mc.num_params() * 2 - 4e9
    assert cm.num_kv_blocks(16) == int(free // per_block)
    with pytest.raises(ValueError, match="KV cache"):
        CostModel(mc, HardwareProfile("small", 1e12, 1e12, 16e9)).num_kv_blocks(16)


def test_fit_recovers_known_factors():
    truth = Efficiency(0.6, 0.9, 0.3, 0.5, 2e-3, 1e-5)
    cm = CostModel(TOY, UNIT)
    rng = np.random.default_rng(0)
    hw = UNIT
    # counts spanning both sides of each max(), in seconds-at-peak units around 1e-3
    n = 200
    c = np.column_stack([rng.uniform(0, 4e6, n), rng.uniform(0, 4e6, n), rng.uniform(0, 4e6, n),
                         rng.uniform(0, 4e6, n), rng.integers(1, 64, n)])
    t = (truth.step_overhead_s + truth.per_seq_overhead_s * c[:, 4]
         + np.maximum(c[:, 0] / (hw.peak_flops * 0.6), c[:, 1] / (hw.mem_bandwidth * 0.9))
         + np.maximum(c[:, 2] / (hw.peak_flops * 0.3), c[:, 3] / (hw.mem_bandwidth * 0.5)))
    fitted, rep = cm.fit(c.tolist(), t.tolist())
    e = fitted.efficiency
    assert rep["mean_abs_rel_error"] < 1e-3
    for name in ("linear_compute", "linear_memory", "attn_compute", "attn_memory",
                 "step_overhead_s", "per_seq_overhead_s"):
        assert getattr(e, name) == pytest.approx(getattr(truth, name), rel=0.02), name
    with pytest.raises(ValueError, match="fit needs"):
        cm.fit(c[:3].tolist(), t[:3].tolist())


def test_fit_total_time_is_unbiased_under_noise():
    # Log-normal step-time noise (a shared CPU): the relative-error optimum underestimates the
    # total; match_total rescales so the predicted steps add up to the measured ones.
    cm = CostModel(TOY, UNIT)
    rng = np.random.default_rng(1)
    n = 300
    c = np.column_stack([rng.uniform(0, 4e6, n), rng.uniform(0, 4e6, n), rng.uniform(0, 4e6, n),
                         rng.uniform(0, 4e6, n), rng.integers(1, 64, n)])
    clean = 2e-3 + c[:, 0] / UNIT.peak_flops + c[:, 3] / UNIT.mem_bandwidth
    t = clean * rng.lognormal(0.0, 0.5, n)

    def total(model):
        return sum(model.time_from_counts(tuple(row)) for row in c.tolist())
    raw, rep_raw = cm.fit(c.tolist(), t.tolist(), match_total=False)
    fitted, rep = cm.fit(c.tolist(), t.tolist())
    assert total(raw) < 0.95 * t.sum()
    assert total(fitted) == pytest.approx(t.sum(), rel=1e-6)
    assert rep["total_time_scale"] > 1.05 and rep_raw["total_time_scale"] == 1.0


def test_bad_efficiency_and_hardware():
    with pytest.raises(ValueError, match="linear_compute"):
        Efficiency(linear_compute=0)
    with pytest.raises(ValueError, match="hardware"):
        get_hardware("tpu-v9")


def test_sim_runner_samples_only_sampling_rows():
    cm = CostModel(TOY, UNIT, EXACT)
    so = _so([(3, 0, False, 0), (1, 9, True, 0)])
    out = SimRunner(cm, filler_token_id=5).execute(so)
    assert out.sampled == {"1": 5}
    assert out.step_time_s == pytest.approx(cm.step_time(so))


def test_buckets_count_the_padded_reference_batch():
    from llmserve.runner.buckets import Buckets
    cm = CostModel(TOY, UNIT, EXACT, buckets=Buckets(64, 8, 8), block_size=16)
    lin_f, _, att_f, att_b, _ = cm.counts(_so([(3, 2, True, 0), (1, 9, True, 0)]))
    # 4 tokens -> 16-token bucket, 8 sequence slots, 8 blocks of 16 = 128 context slots. A
    # mixed batch: the tiled attention walks whole chunks of real tiles: the 1-token request
    # is one one-row tile (a chunk of 16 such tiles), the 3-token one is one 16-row tile (a
    # chunk of 8 such tiles); every tile gathers the 128 slots.
    assert lin_f == 16 * 576 + 8 * 80
    assert att_f == (16 + 8 * 16) * 128 * 32
    assert att_b == ((16 + 8) * 128 + 16) * 32
    # Decode-only: 8 one-token sequences -> T = S = 8 (an 8-token bucket), the decode path
    # gathers each slot's 128 context slots once.
    cm8 = CostModel(TOY, UNIT, EXACT, buckets=Buckets(64, 8, 8, min_tokens=8), block_size=16)
    _, _, att_f, att_b, _ = cm8.counts(_so([(1, 9, True, 0)] * 8))
    assert att_f == 8 * 128 * 32
    assert att_b == (8 * 128 + 8) * 32
