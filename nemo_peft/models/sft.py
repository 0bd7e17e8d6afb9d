"""SFTModule: what every family's Lightning module shares — adapters, the answer-only
training step over a global batch, validation/test loss and exact match, prediction rows,
the optimizer and adapter-only checkpoints, under one process or a data-parallel strategy
(DDP, FSDP2). A family's module (``gpt_sft.py``, ``t5_sft.py``) adds only how its model reads
a batch and how it generates."""
from __future__ import annotations

import math
import os
from dataclasses import asdict

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from nemo_peft.core.fingerprint import check_base
from nemo_peft.models import fsdp
from nemo_peft.models.generation import SamplingParams
from nemo_peft.models.stopping import cut_at_stop, with_model_stops
from nemo_peft.models.optim import OptimConfig, lr_factor
from nemo_peft.models.resume_checks import adapter_config_diffs, plain

# An adapter weight this large means training diverges (finite, so the guard below misses it).
WEIGHT_WARN_MAGNITUDE = 1e4


class SFTModule(L.LightningModule):
    """Subclasses give ``hidden_and_targets(batch)``, ``generate_ids(batch)`` and ``prompt_ids(batch, i)``."""

    no_targets_hint = "check label_key and the length limits"

    def __init__(self, model, tokenizer=None, optim: dict | None = None, generation: dict | None = None,
                 eval_exact_match: bool = True):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.optim = OptimConfig.from_dict(optim)
        self.sampling = SamplingParams.from_dict(generation or {})
        self.eval_exact_match = eval_exact_match
        self.strict_loading = False  # our checkpoints hold adapter weights only
        self._eval = torch.zeros(5, dtype=torch.float64)  # correct, scored, loss sum, loss tokens, stopped
        self._window = torch.zeros(2, dtype=torch.float64)  # this process's loss sum, tokens since the last step
        self._warned_magnitude = False
        self._resync_lr = False

    # ---- adapters: the wrapped model owns them ----
    def add_adapter(self, peft_cfgs, name: str = "default"):
        return self.model.add_adapter(peft_cfgs, name)

    def load_adapters(self, path, cfg=None, name=None):
        return self.model.load_adapters(path, cfg, name)

    def save_adapters(self, path, name=None):
        return self.model.save_adapters(path, name)

    def forward(self, *args, **kw):
        return self.model(*args, **kw)

    def configure_model(self):
        # Under Lightning's ModelParallelStrategy (trainer.strategy=fsdp) shard once, over its data-parallel mesh.
        mesh = getattr(self, "_device_mesh", None)
        if mesh is not None and not fsdp.is_sharded(self.model):
            fsdp.shard_model(self.model, mesh["data_parallel"])

    def all_done(self):
        """For generation: None, or under FSDP a check that every process's rows are finished."""
        if not fsdp.is_sharded(self.model):
            return None
        return lambda done: fsdp.everyone_done(done, self.device)

    # ---- loss ----
    def hidden_and_targets(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(final hidden states [B, T, H], boolean mask [B, T] of the positions that are trained on)."""
        raise NotImplementedError

    def loss_sum(self, batch, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """(sum of the answer tokens' cross-entropies, their number), over the rows where ``rows``
        is true (all by default). The LM head runs only on those positions, which saves most of
        its cost on prompt-heavy data."""
        hidden, keep = self.hidden_and_targets(batch)
        if rows is not None:
            keep = keep & rows.to(keep.device)[:, None]
        n = int(keep.sum())
        if n == 0 and rows is None:
            raise ValueError(f"A batch has no answer tokens to train on; {self.no_targets_hint}.")
        mean = self.model.lm_loss(hidden[keep], batch["labels"][keep]) if n else hidden.sum() * 0.0
        return mean * n, n

    def loss(self, batch) -> torch.Tensor:
        """Mean cross-entropy over the batch's answer tokens."""
        total, n = self.loss_sum(batch)
        return total / n

    def on_fit_start(self):
        # Loaders return models in eval mode; dropout must be live while training. Here, not in on_train_start,
        # which Lightning calls after checking for (and warning about) modules left in eval mode.
        self.train()

    def on_train_start(self):
        if self._resync_lr:
            self._resync_lr = False
            self._apply_schedule()

    # The loss of an optimizer step is the mean over the trained tokens of the whole global batch
    # (every micro-batch of the accumulation window, every data-parallel process), as Megatron's
    # per-token loss: a micro-batch returns its token-loss sum, and before the step the gradients,
    # which Lightning divided by the accumulation count and DDP / FSDP averaged over processes, are
    # scaled by accumulation x processes / tokens. Splitting a batch differently gives the same step.
    def training_step(self, batch, batch_idx):
        total, n = self.loss_sum(batch)
        if not bool(torch.isfinite(total)):
            self._stop_non_finite(f"the loss is {total.item() / n}")
        self._window += torch.tensor([total.item(), n], dtype=torch.float64)
        return total

    def _finish_global_batch(self, optimizer) -> None:
        window = self._window.to(self.device)
        if self.trainer.world_size > 1:
            window = self.trainer.strategy.reduce(window, reduce_op="sum")
        loss_sum, tokens = window.tolist()
        self._window.zero_()
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size / tokens
        for p in self._trained(optimizer):
            if p.grad is not None:
                p.grad.mul_(scale)
        self.log("train_loss", loss_sum / tokens, prog_bar=True)
        self.log("lr", optimizer.param_groups[0]["lr"], prog_bar=True)

    # ---- evaluation: sums over every process, each sample once ----
    def _eval_step(self, batch, prefix: str):
        real = ~batch["duplicate"] if "duplicate" in batch else None
        total, n = self.loss_sum(batch, rows=real)
        stats = [0.0, 0.0, total.item(), n, 0.0]
        if self.eval_exact_match:
            ids = self.generate_ids(batch)
            preds = self.texts(ids)
            scored = range(len(preds)) if real is None else [i for i in range(len(preds)) if bool(real[i])]
            stats[:2] = sum(preds[i].strip() == batch["answers"][i].strip() for i in scored), len(scored)
            # a row that ended before max_new_tokens stopped by itself (EOS, end of turn, a stop string)
            stats[4] = sum(len(ids[i]) < self.sampling.max_new_tokens for i in scored)
        self._eval += torch.tensor(stats, dtype=torch.float64)

    def _eval_epoch_end(self, prefix: str):
        stats = self._eval.to(self.device)
        if self.trainer.world_size > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
        correct, scored, loss_sum, tokens, stopped = stats.tolist()
        self._eval.zero_()
        # the values are already the same on every process: sync_dist only keeps Lightning from warning
        if tokens:
            self.log(f"{prefix}_loss", loss_sum / tokens, prog_bar=True, sync_dist=True)
        if self.eval_exact_match and scored:
            self.log(f"{prefix}_exact_match", 100.0 * correct / scored, prog_bar=True, sync_dist=True)
            self.log(f"{prefix}_stopped", 100.0 * stopped / scored, sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")

    # ---- generation ----
    @property
    def eos_id(self) -> int | None:
        tok_eos = self.tokenizer.eos_id if self.tokenizer is not None else None
        return tok_eos if tok_eos is not None else self.model.config.eos_token_id

    def generate_ids(self, batch) -> list[list[int]]:
        raise NotImplementedError

    def prompt_ids(self, batch, i: int) -> torch.Tensor:
        """Row ``i``'s prompt tokens, padding removed."""
        raise NotImplementedError

    def add_stop_token_ids(self, ids) -> None:
        """Also end generated rows at ``ids`` (the data's chat template's end-of-turn token)."""
        self.sampling.stop_token_ids = sorted(set(self.sampling.stop_token_ids) | set(ids))

    def generation_kwargs(self) -> dict:
        """The decoding loops' arguments besides the batch: params (plus the checkpoint's other EOS ids and
        special-token stop strings as stop ids), EOS, the decode stop strings are checked on, the FSDP sync."""
        eos_ids = (getattr(self.model.config, "extra", None) or {}).get("eos_token_ids") or ()
        return {"params": with_model_stops(self.sampling, self.tokenizer, eos_ids), "eos_id": self.eos_id,
                "decode": self.tokenizer.decode if self.tokenizer is not None else None,
                "all_done": self.all_done()}

    def generate_texts(self, batch) -> list[str]:
        return self.texts(self.generate_ids(batch))

    def texts(self, ids: list[list[int]]) -> list[str]:
        if self.tokenizer is None:
            raise ValueError(f"Generation needs a tokenizer; build {type(self).__name__} with tokenizer=...")
        return [cut_at_stop(self.tokenizer.decode(r), self.sampling.stop) for r in ids]

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        """One row per sample: its prompt (special tokens kept, as the model saw it), the prediction and,
        when the data has one, the label (prompt-only predict files have none)."""
        preds, dup = self.generate_texts(batch), batch.get("duplicate")  # dup: a data-parallel padding copy
        answers = batch.get("answers") or [None] * len(preds)
        return [{"input": self.tokenizer.decode(self.prompt_ids(batch, i).tolist(), skip_special_tokens=False),
                 "prediction": pred.strip(), **({} if answers[i] is None else {"label": answers[i]})}
                for i, pred in enumerate(preds) if dup is None or not bool(dup[i])]

    # ---- optimization ----
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("No trainable parameters: add an adapter (model.peft) before training.")
        opt = torch.optim.AdamW(params, lr=self.optim.lr, betas=self.optim.betas, eps=self.optim.eps,
                                weight_decay=self.optim.weight_decay)
        total = int(self.trainer.estimated_stepping_batches) if self._trainer else 1
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, self.optim))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- non-finite guard: stop before a NaN/inf reaches the weights or a checkpoint ----
    def _trained(self, optimizer) -> list[torch.Tensor]:
        return [p for group in optimizer.param_groups for p in group["params"]]

    def on_before_optimizer_step(self, optimizer):
        self._finish_global_batch(optimizer)
        # With a GradScaler (16-mixed) inf gradients are expected: the scaler skips that step.
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return
        grads = [p.grad for p in self._trained(optimizer) if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a sharded norm
            if not bool(torch.isfinite(norm)):
                self._stop_non_finite(f"the gradient norm is {norm.item()}")
            self.log("grad_norm", norm)  # of the global batch's mean-loss gradient, before clipping

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        params = [p for p in self._trained(optimizer) if p.numel()]
        if not params:
            return
        with torch.no_grad():  # amax propagates NaN, so one reduction checks both
            local = [p.to_local() if hasattr(p, "to_local") else p for p in params]  # FSDP: this shard
            peak = torch.stack([p.detach().abs().amax().float() if p.numel() else p.new_zeros((), dtype=torch.float)
                                for p in local]).amax()
            if fsdp.is_sharded(self.model):
                peak = self.trainer.strategy.reduce(peak, reduce_op="max")
            peak = peak.item()
        if not math.isfinite(peak):
            self._stop_non_finite("an adapter weight became non-finite in the optimizer step")
        if peak > WEIGHT_WARN_MAGNITUDE and not self._warned_magnitude:
            self._warned_magnitude = True
            rank_zero_warn(f"An adapter weight reached magnitude {peak:.3g} in training step "
                           f"{self.trainer.global_step + 1} (lr {self._lr():.3g}): training is likely diverging; "
                           "lower model.optim.lr.")

    def _lr(self) -> float:
        optimizers = self.trainer.optimizers if self._trainer else []
        return float(optimizers[0].param_groups[0]["lr"]) if optimizers else self.optim.lr

    def _stop_non_finite(self, what: str):
        # global_step counts finished optimizer steps: the failing one is the next
        step, total = self.trainer.global_step + 1, self.trainer.max_steps
        last = [cb.last_model_path for cb in self.trainer.checkpoint_callbacks
                if getattr(cb, "last_model_path", "") and os.path.isfile(cb.last_model_path)]
        fix = "Lower model.optim.lr (or add model.optim.warmup_steps) and"
        saved = (f"The last good checkpoint is {last[0]!r}. {fix} resume from it with "
                 f"exp_manager.resume_from_checkpoint={last[0]}." if last else
                 f"No checkpoint has been written in this run. {fix} start again.")
        raise FloatingPointError(
            f"Training stopped in step {step}{f' of {total}' if total > 0 else ''} (lr {self._lr():.3g}): {what}. "
            f"No adapter or checkpoint with non-finite values was written. {saved}"
        )

    # ---- checkpoints: adapters and optimizer state only ----
    def on_save_checkpoint(self, checkpoint):
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if k in trainable or ".adapters." in k}
        checkpoint["nemo_peft_adapters"] = {
            n: [c.to_dict() for c in self.model.adapter_configs(n)] for n in self.model.adapter_names
        }
        checkpoint["nemo_peft_base"] = self.model.base_fingerprints()  # what the adapters were trained on
        checkpoint["nemo_peft_optim"] = asdict(self.optim)
        # Dropout draws from the global RNG: keep it so a resumed run continues the same curve.
        checkpoint["nemo_peft_rng"] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["nemo_peft_rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint):
        diffs = adapter_config_diffs(checkpoint["nemo_peft_adapters"], self.model) \
            if "nemo_peft_adapters" in checkpoint else []
        if diffs:
            raise ValueError(
                "The checkpoint's adapters differ from this model's (saved -> now):\n  " + "\n  ".join(diffs)
                + "\nResume with the same model.peft config as the run that saved the checkpoint; "
                "trainer options (e.g. trainer.max_steps) may change."
            )
        now = self.model.base_fingerprints()
        for name, saved in checkpoint.get("nemo_peft_base", {}).items():
            if name in now:
                check_base(saved, now[name], f"The checkpoint's adapter {name!r}")
        self._apply_changed_optim(checkpoint)
        rng = checkpoint.get("nemo_peft_rng", {})
        if "cpu" in rng:
            torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def _apply_changed_optim(self, checkpoint):
        """Lightning restores the saved lr, betas, ... with the optimizer and scheduler state; a
        changed model.optim (e.g. a lower lr after a divergence) applies from the resumed step on."""
        saved, now = plain(checkpoint.get("nemo_peft_optim")), plain(asdict(self.optim))
        if not saved or saved == now:
            return
        changed = ", ".join(f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k) != v)
        rank_zero_warn(f"model.optim differs from the checkpoint's ({changed}); the new values apply from the "
                       "resumed step on.")
        for state in checkpoint.get("optimizer_states", []):
            for group in state.get("param_groups", []):
                group.update(initial_lr=self.optim.lr, betas=tuple(self.optim.betas), eps=self.optim.eps,
                             weight_decay=self.optim.weight_decay)
        for sched in checkpoint.get("lr_schedulers", []):
            sched["base_lrs"] = [self.optim.lr for _ in sched.get("base_lrs", [])]
        self._resync_lr = True  # the restored lr is the old schedule's: on_train_start recomputes it

    def _apply_schedule(self):
        for config in self.trainer.lr_scheduler_configs:
            sched = config.scheduler
            for group, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs, getattr(sched, "lr_lambdas", [])):
                group["lr"] = base * fn(sched.last_epoch)  # what LambdaLR.step() computes
