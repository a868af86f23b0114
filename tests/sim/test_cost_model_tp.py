"""Tensor-parallel accounting in the cost model: one device's FLOPs/bytes and the all-reduce
term, against figures worked out by hand."""
import pytest

from llmserve.core.sched_output import ScheduledRequest, SchedulerOutput
from llmserve.model.config import ModelConfig, get_preset
from llmserve.sim.cost_model import CostModel, Efficiency
from llmserve.sim.hardware import HardwareProfile, get_hardware

# h=4, i=8, L=2, 2 heads and 2 kv heads of dim 2 (q_size = kv_size = 4), vocab 10, fp32.
TOY = ModelConfig(vocab_size=10, hidden_size=4, intermediate_size=8, num_layers=2, num_heads=2,
                  num_kv_heads=2, head_dim=2)
# 1 GFLOP/s, 1 GB/s memory, a 1 MB/s link with 1 ms per ring hop: the link terms stand out.
LINKED = HardwareProfile("unit", 1e9, 1e9, 1e12, link_bandwidth=1e6, link_latency_s=1e-3)
EXACT = Efficiency(1, 1, 1, 1, 0.0, 0.0)


def _so(reqs):
    """reqs: (new tokens, start_pos)."""
    sch = [ScheduledRequest(str(i), [1] * q, start, [0], True, 0, (0, 0, 1, 0), 0)
           for i, (q, start) in enumerate(reqs)]
    return SchedulerOutput(1, sch, sum(r[0] for r in reqs))


def test_allreduce_and_per_device_counts_by_hand():
    step = _so([(3, 2), (1, 9)])           # 4 tokens: a 3-token chunk and a decode
    cm = CostModel(TOY, LINKED, EXACT, tp=2)
    # Per layer: q,k,v 4*(4+4+4) = 48, o 16, mlp 3*4*8 = 96 -> 160 params; each device half.
    assert cm.linear_flops_per_token == 2 * 2 * 160 / 2
    lin_f, lin_b, att_f, att_b, _ = cm.counts(step)
    assert lin_f == 4 * 320 + 2 * (2 * 4 * 10) / 2        # LM head split by vocabulary
    # 420 params; split: 2 layers x 160 + LM head 40 = 360 -> a device holds 420 - 180.
    assert cm.weight_bytes == 240 * 4
    # activations per token: L * (4h whole + (2q + 2kv + 3i)/tp) * 4 bytes = 2 * 36 * 4
    assert lin_b == 240 * 4 + 4 * 288
    assert att_f == 22 * (4 * 2 * 2 * 2) / 2              # 22 causal pairs, half the heads
    assert att_b == (15 + 4) * (2 * 2 * 4 * 4) / 2        # half the kv heads read/written
    # Ring all-reduce of [4 tokens, h=4] fp32 = 64 bytes over 2 devices: 2 hops of 32 bytes
    # (64 us at 1 MB/s) + 2 hops of 1 ms latency; two all-reduces per layer, 2 layers.
    allreduce = 2 * 2 * (2 * 32 / 1e6 + 2 * 1e-3)
    assert cm.allreduce_time(4) == pytest.approx(allreduce)
    assert cm.step_time(step) == pytest.approx(
        (max(1360, 2112) + max(352, 608)) / 1e9 + allreduce)
    assert CostModel(TOY, LINKED, EXACT).allreduce_time(4) == 0.0


def test_tp_on_h100_llama3_8b():
    mc, hw = get_preset("llama3-8b"), get_hardware("h100-80gb")
    one, two = CostModel(mc, hw), CostModel(mc, hw, tp=2)
    decode = _so([(1, 500)] * 8)
    # Decode streams the weights: half of them per device, ~1.6-1.9x faster with the
    # all-reduces (each ~2 hops x 2 us for 8 rows) paid on top.
    speedup = one.step_time(decode) / two.step_time(decode)
    assert 1.5 < speedup < 2.0
    assert 128 * 2e-6 < two.allreduce_time(8) < 128 * 3e-6
    # Half the weights per device leaves more than twice the room for (half-size) KV blocks.
    assert two.num_kv_blocks(16) > 2 * one.num_kv_blocks(16)
    # fit() and with_efficiency() keep the split.
    assert two.with_efficiency(Efficiency()).allreduce_time(8) == two.allreduce_time(8)


def test_bad_tp_is_a_clear_error():
    mc = get_preset("llama3-8b")
    with pytest.raises(ValueError, match="tp=3 must divide the model's num_heads"):
        CostModel(mc, get_hardware("h100-80gb"), tp=3)
    with pytest.raises(ValueError, match="link_bandwidth"):
        CostModel(mc, HardwareProfile("nolink", 1e12, 1e12, 80e9), tp=2)
    with pytest.raises(ValueError, match="positive int"):
        CostModel(mc, get_hardware("h100-80gb"), tp=0)
