"""The loss of an optimizer step is the mean over the trained (answer) tokens of the whole global batch,
however the batch is split into accumulated micro batches: one lightning.Trainer step over micro batch
4 x 2 accumulation steps (or 2 x 4, 1 x 8) gives the gradient and update of one micro batch of 8, and
both equal a dense hand-computed reference; the mean of micro-batch means, which differs when answer
lengths differ, does not. In process, one process, CPU."""
import functools

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from nemo_peft.data.collate import collate_sft
from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.models.gpt_sft import GPTSFTModel
from nemo_peft.peft.lora import LoraPEFTConfig
from tests.helpers import make_model, randomize_adapters

GLOBAL = 8
# answers of very different lengths, so that the first four examples carry few of the batch's tokens
ANSWER_LENGTHS = [1, 1, 2, 1, 7, 6, 8, 5]
PROMPT_LENGTHS = [5, 3, 6, 4, 2, 5, 3, 4]
# float32 sums in another order (other padding, other micro batches): a tensor's error, relative to its norm
TOL = 2e-5


def examples() -> list[dict]:
    g = torch.Generator().manual_seed(3)
    items = []
    for i, (p, a) in enumerate(zip(PROMPT_LENGTHS, ANSWER_LENGTHS)):
        context = torch.randint(3, 250, (p,), generator=g).tolist()
        answer = torch.randint(3, 250, (a,), generator=g).tolist()
        items.append({"input_ids": context + answer, "loss_mask": [0] * p + [1] * a, "context_ids": context,
                      "answer": str(i), "metadata": {"i": i}})
    return items


class SGDCapture(GPTSFTModel):
    """Plain SGD with lr 1 (the update IS the gradient), recording the gradients the optimizer gets,
    i.e. after the module's own on_before_optimizer_step has scaled them for the global batch."""

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=1.0)

    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        self.grads = {n: p.grad.detach().clone() for n, p in self.named_parameters() if p.requires_grad}


def build(cls=SGDCapture):
    tok = Tokenizer.byte_level()
    module = cls(make_model("llama", vocab_size=tok.vocab_size), tok, eval_exact_match=False)
    module.add_adapter(LoraPEFTConfig(target_modules=["all"], dim=2))
    randomize_adapters(module.model, seed=1, std=0.1)  # B != 0: every adapter weight gets a gradient
    return module


def train_one_step(micro: int) -> tuple[SGDCapture, dict, dict, L.Trainer]:
    """One optimizer step over the 8 examples in micro batches of ``micro``: (module, weights before,
    weights after, trainer)."""
    module = build()
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    collate = functools.partial(collate_sft, pad_id=0)
    loader = DataLoader(examples(), batch_size=micro, shuffle=False, collate_fn=collate)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, accumulate_grad_batches=GLOBAL // micro,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 1
    after = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    return module, before, after, trainer


def token_losses(model, rows: list[dict]) -> tuple[torch.Tensor, int]:
    """(sum of the answer tokens' cross-entropies over ``rows``, their number): the full logits of each
    row on its own, no padding, next-token targets by hand."""
    total, count = 0.0, 0
    for item in rows:
        ids = torch.tensor(item["input_ids"])
        logits = model(ids[None])[0]
        answer = torch.tensor(item["loss_mask"][1:], dtype=torch.bool)  # position t predicts token t + 1
        total = total + F.cross_entropy(logits[:-1][answer], ids[1:][answer], reduction="sum")
        count += int(answer.sum())
    return total, count


def reference_grads(loss_fn) -> tuple[dict, float]:
    module = build()
    model = module.model.train()
    loss = loss_fn(model)
    loss.backward()
    return {f"model.{n}": p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, loss.item()


def global_token_mean(model):
    total, count = token_losses(model, examples())
    return total / count


def mean_of_micro_batch_means(model, micro=4):
    rows = examples()
    means = [s / c for s, c in (token_losses(model, rows[i:i + micro]) for i in range(0, GLOBAL, micro))]
    return sum(means) / len(means)


def relative_errors(actual: dict, expected: dict) -> dict:
    assert actual.keys() == expected.keys()
    return {n: ((actual[n] - expected[n]).norm() / expected[n].norm()).item() for n in expected}


def assert_grads_close(actual: dict, expected: dict):
    errors = relative_errors(actual, expected)
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOL, f"{worst}: relative error {errors[worst]:.3g}"


@pytest.fixture(scope="module")
def whole_batch():
    return train_one_step(GLOBAL)


@pytest.fixture(scope="module")
def reference():
    return reference_grads(global_token_mean)


def test_the_examples_make_micro_batch_means_differ_from_the_token_mean(reference):
    assert sum(ANSWER_LENGTHS[:4]) * 3 < sum(ANSWER_LENGTHS[4:])  # the first micro batch of 4 is light
    naive, naive_loss = reference_grads(mean_of_micro_batch_means)
    ref, ref_loss = reference
    # (c) the mean of micro-batch means is another gradient, far outside the tolerance
    assert max(relative_errors(naive, ref).values()) > 100 * TOL
    with pytest.raises(AssertionError):
        assert_grads_close(naive, ref)
    assert abs(naive_loss - ref_loss) > 1e-3


def test_whole_batch_step_is_the_dense_token_mean(whole_batch, reference):
    """(b) one micro batch of 8: the gradient the optimizer gets is that of the token mean, by hand."""
    module, before, after, trainer = whole_batch
    ref, ref_loss = reference
    assert_grads_close(module.grads, ref)
    # SGD, lr 1: the update is minus that gradient
    assert_grads_close({n: before[n] - after[n] for n in before}, ref)
    # (d) the logged loss is the global token mean
    assert trainer.callback_metrics["train_loss"].item() == pytest.approx(ref_loss, rel=1e-5)


@pytest.mark.parametrize("micro", [4, 2, 1])
def test_accumulated_micro_batches_give_the_whole_batch_step(micro, whole_batch, reference):
    """(a) micro batch 4 x 2 accumulation steps (2 x 4, 1 x 8): the same gradient, update and logged
    loss as one micro batch of 8, i.e. the global token mean, not the mean of micro-batch means."""
    module, before, after, trainer = train_one_step(micro)
    whole, _, whole_after, whole_trainer = whole_batch
    ref, ref_loss = reference
    assert_grads_close(module.grads, whole.grads)
    assert_grads_close(module.grads, ref)
    assert_grads_close({n: before[n] - after[n] for n in after}, {n: before[n] - whole_after[n] for n in after})
    logged = trainer.callback_metrics["train_loss"].item()
    assert logged == pytest.approx(whole_trainer.callback_metrics["train_loss"].item(), rel=1e-5)
    assert logged == pytest.approx(ref_loss, rel=1e-5)
    if micro == 4:
        naive_loss = mean_of_micro_batch_means(build().model, micro).item()
        assert abs(logged - naive_loss) > 1e-3
