import pytest
import torch
import torch.nn.functional as F

from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.models.gpt_sft import GPTSFTModel
from nemo_peft.models.sft import OptimConfig, lr_factor
from nemo_peft.peft.lora import LoraPEFTConfig
from tests.conftest import make_model


def module(**kw):
    tok = Tokenizer.byte_level()
    m = GPTSFTModel(make_model("llama", vocab_size=tok.vocab_size), tok, **kw)
    m.add_adapter(LoraPEFTConfig(target_modules=["all"], dim=2))
    return m


def batch():
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 9)
    mask[0, 4:8] = 1
    mask[1, 6:8] = 1
    return {"input_ids": ids, "labels": torch.roll(ids, -1, 1), "loss_mask": mask}


def test_loss_is_answer_only_cross_entropy():
    m, b = module(), batch()
    logits = m.model(b["input_ids"])
    keep = b["loss_mask"] > 0
    expected = F.cross_entropy(logits[keep], b["labels"][keep])
    torch.testing.assert_close(m.loss(b), expected)
    b2 = dict(b, labels=b["labels"].clone())
    b2["labels"][~keep] = 0  # labels outside the answer must not matter
    torch.testing.assert_close(m.loss(b2), expected)


def test_optimizer_covers_only_trainable_params():
    m = module()
    opt = m.configure_optimizers()["optimizer"]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for n, p in m.named_parameters() if ".adapters." in n}


def test_warmup_then_cosine_schedule():
    cfg = OptimConfig(lr=1.0, warmup_steps=4, min_lr=0.1)
    assert [lr_factor(s, 20, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert abs(lr_factor(20, 20, cfg) - 0.1) < 1e-9
    assert lr_factor(12, 20, cfg) < lr_factor(8, 20, cfg)


def test_exact_match_counts_generated_answers():
    m = module(generation={"max_new_tokens": 4})
    ctx = torch.tensor([[65, 66, 67]])
    pred = m.generate_texts({"context_ids": ctx, "context_mask": torch.ones_like(ctx)})[0]
    b = {"input_ids": ctx, "labels": ctx, "loss_mask": torch.ones(1, 3), "context_ids": ctx,
         "context_mask": torch.ones_like(ctx), "answers": [pred.strip()]}
    m._eval_step(b, "val")
    b["answers"] = [pred.strip() + "x"]
    m._eval_step(b, "val")
    assert m._eval[:2].tolist() == [1, 2]  # correct, scored


@pytest.mark.parametrize("arch", ["gpt", "t5"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(arch):
    from nemo_peft.models.t5 import T5Config, T5Model
    from nemo_peft.peft import LoraPEFTConfig
    from tests.conftest import make_model

    def build():
        torch.manual_seed(0)
        m = make_model("llama") if arch == "gpt" else T5Model(T5Config(vocab_size=97, d_model=32, d_kv=8, d_ff=32,
                                                                        num_layers=2, num_heads=2))
        m.add_adapter(LoraPEFTConfig(target_modules=["all"], dim=2))
        for n, p in m.named_parameters():
            if "lora_b" in n:
                torch.nn.init.normal_(p, std=0.1)
        return m.train()

    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    results = []
    for recompute in (False, True):
        m = build()
        m.set_activation_checkpointing(recompute)
        out = m(ids) if arch == "gpt" else m(ids, None, ids[:, :5])
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad for n, p in m.named_parameters() if p.requires_grad}))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    for n, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][n], g, rtol=1e-6, atol=1e-7)
