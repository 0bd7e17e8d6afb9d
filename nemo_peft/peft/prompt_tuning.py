"""Prompt tuning: a learned soft prompt [virtual_tokens, hidden] put in front of every sequence.

It fills the embedding's ``prompt`` slot. The model is NOT unchanged at
initialisation: the soft prompt is extra context from step 0.

Initialisation (``init``):

- ``"random"``: normal(0, ``init_std``);
- ``"vocab"``: copies of the embeddings of random vocabulary tokens (global RNG);
- ``"text"``: the embeddings of the tokens of ``init_text``, repeated / cut to
  ``virtual_tokens``. The model has no tokenizer, so the config needs the token ids in
  ``init_token_ids``: the recipes fill them by tokenizing ``init_text``
  (``PromptTuningPEFTConfig.from_section``); in code, pass
  ``init_token_ids=tokenizer.encode(text)``. The ids are saved with the config, so
  loading the adapter later needs no tokenizer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from nemo_peft.peft.base import PEFTConfig, SlotContext, check_choice, check_number, is_number, option_error, register

INIT_METHODS = ("random", "vocab", "text")
_INIT_ALIASES = {"sample_vocab": "vocab"}  # Hugging Face PEFT's PromptTuningInit names (any case)


class SoftPrompt(nn.Module):
    """adapter() -> the learned [virtual_tokens, hidden] prompt."""

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(init.detach().clone())

    def forward(self) -> torch.Tensor:
        return self.weight

    def extra_repr(self) -> str:
        return f"virtual_tokens={self.weight.shape[0]}, hidden={self.weight.shape[1]}"


@register("prompt_tuning", section="prompt_tuning")
@dataclass
class PromptTuningPEFTConfig(PEFTConfig):
    virtual_tokens: int = 10
    init: str = "random"  # "random" | "vocab" | "text"
    init_text: str | None = None  # with init="text"; tokenized into init_token_ids by the recipe
    init_std: float = 0.02  # with init="random"
    init_token_ids: list[int] | None = None  # the tokens of init_text (required by init="text")

    aliases = {
        "num_virtual_tokens": "virtual_tokens",  # Hugging Face PEFT
        "prompt_tuning_init": "init",
        "prompt_tuning_init_text": "init_text",
        "new_prompt_init_methods": "init",  # NeMo 1.x
        "new_prompt_init_text": "init_text",
    }

    def __post_init__(self):
        self.init = str(self.init).lower()
        self.init = _INIT_ALIASES.get(self.init, self.init)
        check_choice(self, "init", INIT_METHODS)
        check_number(self, "virtual_tokens", integer=True, at_least=1)
        if self.init == "random":  # unused by the other inits
            check_number(self, "init_std", above=0)
        if self.init_text is not None and not isinstance(self.init_text, str):
            raise option_error(self, "init_text", "must be a string (or null)")
        if self.init_token_ids is not None:
            ids = self.init_token_ids
            if isinstance(ids, str) or not hasattr(ids, "__iter__") or not all(
                    is_number(i) and i == int(i) and i >= 0 for i in ids):
                raise option_error(self, "init_token_ids", "must be a list of token ids (integers >= 0)")
            self.init_token_ids = [int(i) for i in ids]

    @classmethod
    def from_section(cls, options: dict, tokenizer=None) -> "PromptTuningPEFTConfig":
        """The recipes' path: tokenize ``init_text`` into ``init_token_ids`` unless the ids are given."""
        options = dict(options)
        if options.get("init_text") and tokenizer is not None and not options.get("init_token_ids"):
            options["init_token_ids"] = tokenizer.encode(options["init_text"])
        return cls.from_kwargs(options)

    def initial_prompt(self, word_embeddings: torch.Tensor) -> torch.Tensor:
        """The starting [virtual_tokens, hidden] prompt, from the model's [vocab, hidden] embeddings."""
        n, (vocab, hidden) = self.virtual_tokens, word_embeddings.shape
        if self.init == "random":
            return torch.randn(n, hidden) * self.init_std
        if self.init == "vocab":
            ids = torch.randint(0, vocab, (n,))
        else:
            if not self.init_token_ids:
                raise ValueError(
                    "Prompt tuning init='text' needs the token ids of init_text in init_token_ids; the recipes "
                    "fill them from the tokenizer, in code pass init_token_ids=tokenizer.encode(init_text)."
                )
            bad = [i for i in self.init_token_ids if not 0 <= i < vocab]
            if bad:
                raise ValueError(f"Prompt tuning init_token_ids {bad[:5]} are outside the vocabulary (size {vocab}).")
            ids = torch.tensor(self.init_token_ids * math.ceil(n / len(self.init_token_ids)))[:n]
        return word_embeddings.detach()[ids.to(word_embeddings.device)].float().cpu()

    def build_adapters(self, slots: list[SlotContext]):
        built = {}
        for ctx in slots:
            if ctx.spec.kind == "prompt" and ctx.spec.name == "prompt":
                built[ctx.key] = SoftPrompt(self.initial_prompt(ctx.block.word_embeddings.weight))
        if not built:
            raise ValueError("Prompt tuning found no 'prompt' slot: the model has no adapter-capable embedding.")
        return built
