"""What do empty adapter slots cost? Measures, in one run:

1. our base forward (SmolLM2-135M shapes, random weights) beside HF transformers'
   LlamaForCausalLM with the same weights: a single decode step (1 token, KV cache)
   and a 128-token prefill, median of many runs, as ratios;
2. the slot checks themselves: each forward does one ``slot.active`` test per slot
   (10 per layer, 2 in the embedding); we time that test and report it as a share of the forward.

    python benchmarks/bench_empty_slots.py
"""
import statistics
import time
import timeit

import torch

from nemo_peft.models.gpt import GPTConfig, GPTModel


def median_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main():
    torch.set_num_threads(2)
    cfg = GPTConfig(vocab_size=49152, hidden_size=576, num_layers=30, num_attention_heads=9, num_query_groups=3,
                    ffn_hidden_size=1536, rotary_base=1e5)
    ours = GPTModel(cfg).eval()
    import tempfile

    from transformers import AutoModelForCausalLM

    from nemo_peft.convert.hf_gpt import save_hf as export
    with tempfile.TemporaryDirectory() as d:
        export(ours, d, model_type="llama")
        hf = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()

    prompt = torch.randint(0, 49152, (1, 128), generator=torch.Generator().manual_seed(0))
    tok = prompt[:, :1]
    rows = []
    with torch.inference_mode():
        cache = ours.new_kv_cache(1, 4096)
        ours(prompt, kv_cache=cache)

        def ours_step():
            cache.length = 128  # re-run the same decode step
            ours(tok, kv_cache=cache, position_ids=torch.tensor([[128]]))
        hf_past = hf(prompt, use_cache=True).past_key_values

        def hf_step():
            hf(tok, past_key_values=hf_past, use_cache=True, position_ids=torch.tensor([[128]]))
            hf_past.crop(-1)  # drop the token just added: every call is the same decode step
        for name, a, b, reps in [("decode step (1 token, cache of 128)", ours_step, hf_step, 60),
                                 ("prefill (128 tokens)", lambda: ours(prompt), lambda: hf(prompt), 15)]:
            ta, tb = [], []
            for _ in range(3):  # alternate to share machine noise
                ta.append(median_ms(a, reps))
                tb.append(median_ms(b, reps))
            rows.append((name, min(ta), min(tb)))

    slot = ours.decoder.layers[0].self_attention.lora_qkv
    attn = ours.decoder.layers[0].self_attention
    per_check_us = 1e6 * min(timeit.repeat(lambda: attn.lora_qkv.active, number=20000, repeat=5)) / 20000
    n_checks = len(ours.adapter_slots_by_path())  # each slot is tested once per forward
    assert not slot.active
    print("| forward | nemo_peft ms | HF transformers ms | speed-up (HF / ours) |")
    print("|---|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a:.2f} | {b:.2f} | {b / a:.2f}x |")
    decode_ms = rows[0][1]
    print(f"\nempty-slot checks: {n_checks} per forward x {per_check_us:.3f} us = {n_checks * per_check_us:.1f} us "
          f"= {100 * n_checks * per_check_us / 1e3 / decode_ms:.2f}% of one decode step")


if __name__ == "__main__":
    main()
