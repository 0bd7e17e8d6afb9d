"""benchmarks/time_split.py: the profiled matmul FLOPs against torch's FlopCounterMode on real training
steps, the split's arithmetic, and what the verdicts conclude."""
import pytest
import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import time_split as ts
from benchmarks.common import add_lora_hf, add_lora_ours, hf_twin, loss_hf, loss_ours
from tests.helpers import ONEDNN_FLOPS, make_model

GQA = dict(num_layers=2, num_attention_heads=6, num_query_groups=2, hidden_size=48, ffn_hidden_size=80)
MATMULS = ("aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten.addmm_", "aten.baddbmm_",
           "mkldnn._linear_pointwise")
# the counter has no formula for the in-place variants ours uses to add LoRA into the output: theirs
IN_PLACE = {torch.ops.aten.addmm_: flop_counter.addmm_flop.__wrapped__,
            torch.ops.aten.baddbmm_: flop_counter.baddbmm_flop.__wrapped__, **ONEDNN_FLOPS}


def ids():
    return torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize("side", ["hf_eager", "ours"])
def test_profiled_matmul_flops_equal_the_flop_counter(one_thread, side):
    """HF + peft with eager attention (its attention is bmm) and ours (LoRA added into the output by
    ``baddbmm_``/``addmm_``): the FLOPs read from the profiler's shapes are the counter's, exactly."""
    base = make_model("llama", **GQA)
    if side == "ours":
        model, loss_fn = add_lora_ours(base).train(), loss_ours
    else:
        model, loss_fn = add_lora_hf(hf_twin(base, attn_implementation="eager")).train(), loss_hf
    loss_fn(model, ids()).backward()  # warm: the counted and the profiled passes run the same ops
    with FlopCounterMode(display=False, custom_mapping=IN_PLACE) as fc:
        loss_fn(model, ids()).backward()
    counts = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    split = ts.profile_split(lambda: loss_fn(model, ids()).backward())
    assert split.matmul_flops == sum(counts.get(k, 0) for k in MATMULS) > 0
    assert split.matmul_s > 0 and split.calls > 0
    # the kinds never add up to more than the wall time: each call's self time is counted once
    assert split.matmul_s + split.attention_s + split.other_s <= split.wall_s * 1.01
    if side == "ours":
        assert split.attention_s > 0  # SDPA
    else:
        assert split.attention_s == 0 and counts.get("aten.bmm", 0) > 0


def test_split_sums_by_kind():
    events = [("aten::mm", 0.5, [[2, 3], [3, 4]]),
              ("aten::baddbmm_", 0.1, [[2, 4, 5], [2, 4, 3], [2, 3, 5], [], []]),
              ("aten::addmm", 0.05, [[4], [2, 3], [3, 4], [], []]),
              ("mkldnn::_linear_pointwise", 0.05, [[1, 1, 6], [7, 6], [], [], [], []]),
              ("aten::_scaled_dot_product_flash_attention_for_cpu", 0.1, [[1, 2, 3, 4]]),
              ("aten::mul", 0.05, [[3], [3]]), ("aten::mul", 0.02, [[3], [3]]), ("aten::add", 0.03, [[3], [3]])]
    s = ts.split_events(events, wall_s=1.0)
    assert s.matmul_s == pytest.approx(0.7) and s.attention_s == pytest.approx(0.1)
    assert s.other_s == pytest.approx(0.1) and s.outside_s == pytest.approx(0.1)
    assert s.matmul_flops == 2 * 2 * 3 * 4 + 2 * 2 * 4 * 3 * 5 + 2 * 2 * 3 * 4 + 2 * 6 * 7
    assert s.top_other[0] == ("aten::mul", pytest.approx(0.07)) and s.calls == len(events)
    assert s.share(s.matmul_s) == pytest.approx(70.0)
    assert ts.matmul_flops("aten::mm", [[2, 3]]) == 0  # shapes not recorded: no guess


def test_verdicts_say_which_target_binds_and_the_ceiling():
    s = ts.split_events([("aten::mm", 0.6, [[10, 10], [10, 10]]), ("aten::mul", 0.3, [[1]])], wall_s=1.0)
    # timed medians: ours 5 s, HF 6 s; roofline 3.4 s -> 85% needs 4.0 s, 1.25x needs 4.8 s: the roofline binds
    text = ts.train_verdict(s, 5.0, 6.0, 3.4, 200.0)
    assert "the roofline target binds" in text and "(3.00 s of the 5.00 s median)" in text
    assert "would be at 113% of its roofline" in text and "takes 2.00 s now" in text
    assert "1.25x HF+peft target binds" in ts.train_verdict(s, 5.0, 4.0, 3.4, 200.0)
    # ceiling: our matmuls alone 0.6 * 2 s = 1.2 s against HF's 3 s
    assert "we would be 2.50x HF+peft's 3.00 s (target 2.0x; measured 1.50x)" in ts.ceiling_verdict(
        "batched generation", s, 2.0, 3.0, 2.0)
    # decode: 20 tok/s = 50 ms a token, GEMVs 0.6 s over 20 tokens = 30 ms; bound 30 tok/s = 33.3 ms; 80% -> 41.7
    d = ts.decode_verdict(s, 20, 20.0, 30.0)
    assert "take 30.0 ms of a 50.0 ms token" in d and "which leaves 11.7 ms" in d and "takes 20.0 ms now" in d
    slow = ts.decode_verdict(s, 12, 20.0, 30.0)  # 50 ms of GEMVs a token: over the 41.7 ms of 80% of the bound
    assert "which the GEMVs alone already exceed by 8.3 ms" in slow and "leaves" not in slow
