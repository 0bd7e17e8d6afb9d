"""benchmarks/roofline.py: the analytic FLOP count of a LoRA training step against torch's
FlopCounterMode on real forward + backward passes, and the limit-measuring helpers on tiny sizes."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import roofline as rl
from benchmarks.common import RANK, TARGETS, add_lora_hf, add_lora_ours, hf_twin, loss_hf, loss_ours
from tests.helpers import ONEDNN_FLOPS, make_model

B, T = 2, 11
GQA = dict(num_layers=3, num_attention_heads=6, num_query_groups=2, hidden_size=48, ffn_hidden_size=80)


def ids():
    return torch.randint(0, 97, (B, T), generator=torch.Generator().manual_seed(3))


def counted(model, loss_fn):
    with FlopCounterMode(display=False, custom_mapping=ONEDNN_FLOPS) as fc:
        loss_fn(model, ids()).backward()
    return fc


def test_step_flops_equal_flop_counter_on_hf_peft(one_thread):
    """HF + peft (an independent implementation of LoRA on the 7 targets) with eager attention: its
    mm FLOPs are exactly the frozen + LoRA + LM-head count (HF's head runs on all B*T positions), and
    its bmm FLOPs exactly twice the causal attention count (eager attention computes the full square)."""
    ours = make_model("llama", **GQA)
    hf = add_lora_hf(hf_twin(ours, attn_implementation="eager")).train()
    fc = counted(hf, loss_hf)
    g = rl.flops_by_group(rl.train_matmuls(ours.config, B, T, RANK, TARGETS, label_rows=B * T))
    ops = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    assert ops.pop("aten.mm") == g["frozen"] + g["lora"] + g["lm_head"]
    assert ops.pop("aten.bmm") == 2 * g["attention"]
    assert not ops, f"matmuls the count does not know: {ops}"


def test_step_flops_on_ours(one_thread):
    """Ours: every frozen linear (layer 0's q/k/v without input gradient) and the chunked LM head on
    the labelled positions match exactly; LoRA costs at least the canonical count (ours may multiply by
    zero blocks of its stacked B); CPU flash attention is not counted by FlopCounterMode."""
    model = add_lora_ours(make_model("llama", **GQA)).train()
    counts = counted(model, loss_ours).get_flop_counts()
    total = lambda key: sum(counts.get(key, {}).values())  # noqa: E731
    mms = rl.train_matmuls(model.config, B, T, RANK, TARGETS)
    for name in rl.linear_shapes(model.config):
        want = sum(mm.flops for mm in mms if mm.group == "frozen" and mm.name.startswith(name + " "))
        got = sum(total(k) for k in counts if k.endswith("." + name))
        assert got == want, name
    assert total("Global") - total("GPTModel") == rl.flops_by_group(mms)["lm_head"]
    lora = sum(total(k) for k in counts if k.endswith(".adapters.default"))
    assert lora >= rl.flops_by_group(mms)["lora"]


def test_attention_count_against_explicit_causal_matmuls():
    """QK^T and PV forward + backward with explicit matmuls: the full square is twice the causal count."""
    cfg = make_model("llama", **GQA).config
    h, d = cfg.num_attention_heads, cfg.head_dim
    q, k, v = (torch.randn(B, h, T, d, requires_grad=True) for _ in range(3))
    with FlopCounterMode(display=False) as fc:
        p = torch.softmax((q @ k.transpose(-1, -2)).tril() - torch.triu(torch.full((T, T), 1e9), 1), -1)
        (p @ v).sum().backward()
    per_layer = rl.flops_by_group(rl.train_matmuls(cfg, B, T, RANK, TARGETS))["attention"] / cfg.num_layers
    assert fc.get_total_flops() == 2 * per_layer


def test_label_rows_and_layer0():
    cfg = make_model("llama", **GQA).config
    mms = {mm.name: mm for mm in rl.train_matmuls(cfg, B, T, RANK, TARGETS)}
    assert mms["linear_qkv dx"].count == cfg.num_layers - 1 and mms["q_proj dx"].count == cfg.num_layers - 1
    assert mms["linear_proj dx"].count == cfg.num_layers and mms["o_proj dx"].count == cfg.num_layers
    lm = mms["LM head fwd"]
    assert lm.flops == 2 * B * (T - 1) * cfg.hidden_size * cfg.vocab_size


def test_decode_bytes_are_the_weights_read_per_token():
    model = make_model("llama", **GQA)
    linears = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    head = model.output_weight().numel()
    assert rl.decode_bytes(model.config) == 4 * (linears + head)
    lora = sum(p.numel() for p in add_lora_ours(model).parameters() if p.requires_grad)
    assert rl.decode_bytes(model.config, 4, RANK, TARGETS) == 4 * (linears + head + lora)


def test_measuring_helpers_give_sane_numbers(one_thread):
    cfg = make_model("llama", **GQA).config
    mms = rl.train_matmuls(cfg, B, T, RANK, TARGETS)
    peaks = rl.measure_peaks(mms, torch.float32, reps=1, budget_s=0.01)
    assert set(peaks) == {mm.key for mm in mms}
    assert all(0 < v < 1e7 for v in peaks.values())
    assert 0 < rl.roofline_seconds(mms, peaks) < 60
    assert rl.matmul_gflops(rl.Mm("x", "y", 16, 32, 8, layout="tn"), torch.bfloat16, reps=1, budget_s=0.01) > 0
    copy, gemv = rl.copy_bandwidth(8, reps=2), rl.gemv_bandwidth(4, cols=256, reps=2)
    assert 0 < copy < 1e5 and 0 < gemv < 1e5


def test_merge_floor():
    cfg = make_model("llama", **GQA).config
    merges = rl.merge_matmuls(cfg, RANK, TARGETS)
    in_out = [rl._IN_OUT[t](cfg) for t in TARGETS]
    assert sum(mm.flops for mm in merges) == 2 * RANK * cfg.num_layers * sum(i * o for i, o in in_out)
    weights = 4 * cfg.num_layers * sum(i * o for i, o in in_out)
    assert rl.merge_bytes(cfg, RANK, TARGETS) == weights
    floor = rl.merge_floor_seconds(cfg, RANK, TARGETS, peak_gflops=100.0, copy_gbps=10.0)
    assert floor == pytest.approx(sum(mm.flops for mm in merges) / 100e9 + 2 * weights / 10e9)


def test_limits_keep_the_best_of_two_passes(one_thread):
    cfg = make_model("llama", **GQA).config
    one, two = (rl.measure_limits(cfg, B, T, RANK, TARGETS, quick=True, mib=(8, 4)) for _ in range(2))
    best = {dt: {k: max(one.peaks[dt][k], two.peaks[dt][k]) for k in one.peaks[dt]} for dt in one.peaks}
    copy = max(one.copy_gbps, two.copy_gbps)
    one.absorb(two)
    assert one.peaks == best and one.copy_gbps == copy
    assert one.roofline_s() > 0 and one.decode_bound() > 0 and one.merge_floor_s() > 0
    assert "Machine" not in rl.limits_markdown(one, B * T) and "| linear_qkv fwd |" in rl.limits_markdown(one, B * T)


@pytest.mark.parametrize("layout", ["nt", "nn", "tn", "bmm"])
def test_operands_compute_the_shape(layout):
    mm = rl.Mm("x", "y", 5, 7, 3, layout=layout, batch=2 if layout == "bmm" else 1)
    fn, out, onednn = rl._operands(mm, mm.m, torch.float32, "cpu")
    fn(out)
    assert out.shape[-2:] == (5, 3)
    # the forward and input-gradient shapes are also timed through oneDNN where our training runs them there
    from nemo_peft.modules.linear import ONEDNN_LINEAR
    assert (onednn is not None) == (ONEDNN_LINEAR and layout in ("nt", "nn"))
    if onednn is not None:
        torch.testing.assert_close(onednn(), out)
