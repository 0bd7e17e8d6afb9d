"""Chat SFT data: conversations (messages / sharegpt / alpaca records) rendered with the model's chat
template, with the loss on assistant turns only.

The assistant text is located without parsing the template: for an assistant turn i, rendering
messages[:i] with the generation prompt and rendering messages[:i+1] differ exactly by the turn
(its content and end-of-turn marker, e.g. SmolLM2's "<|im_end|>"). That needs the template to
render each conversation as a prefix of its continuations, which is checked. The whole text is
then tokenized once, with character offsets, and a token is trained when its characters overlap
a trained span (trailing whitespace after the end-of-turn marker is not trained).

Truncation (max_seq_length): whole trailing turns are dropped, keeping the system prompt and the
first turns, so that the conversation ends with the last assistant turn that fits; a
conversation whose first assistant turn does not fit is dropped. ``stats`` counts both.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from torch.utils.data import Dataset

from nemo_peft.data.chat_template import end_of_turn_ids, resolve_chat_template, special_tokens_of
from nemo_peft.data.formats import MessageReader
from nemo_peft.data.jsonl import check_max_num_samples, file_name_list
from nemo_peft.data.record_files import read_records
from nemo_peft.data.tokenizer import Tokenizer

TRAIN_ON = ("all_assistant", "last_assistant")
TOO_LONG = "too_long"  # the drop reason: the first assistant turn (a prompt, for predict) exceeds max_seq_length


@dataclass
class _Encoded:
    ids: list[int]
    loss_mask: list[int]
    context_ids: list[int]
    answer: str | None
    kept: int  # messages kept (fewer than given when trailing turns were cut)


class ChatSFTDataset(Dataset):
    """Conversations tokenized for causal-LM fine-tuning; items have SFTDataset's keys:
    ``input_ids``, ``loss_mask`` (1 on trained assistant tokens), ``context_ids`` (the prompt for
    the last kept assistant turn, ending with the template's generation prompt), ``answer`` (that
    turn's stripped content; None for a prompt without answer) and ``metadata`` (the record).

    ``train_on``: ``all_assistant`` (every assistant turn) or ``last_assistant``. ``predict``: the
    split is for generation, so a conversation may end without an assistant turn (a prompt).
    Records are read, checked, rendered and measured when the dataset is built (bad data fails
    before training, ``stats`` are known); items are tokenized again when asked for.
    """

    def __init__(self, file_names: list[str] | str, tokenizer: Tokenizer, format: str = "auto",  # noqa: A002
                 chat_template: str | None = None, chat_template_file: str | None = None,
                 train_on: str = "all_assistant", max_seq_length: int = 512, max_num_samples: int | None = None,
                 predict: bool = False):
        self.file_names = file_name_list(file_names)
        if train_on not in TRAIN_ON:
            raise ValueError(f"train_on={train_on!r}; valid: {', '.join(TRAIN_ON)}.")
        if max_seq_length < 2:
            raise ValueError(f"max_seq_length={max_seq_length} is too small: it must be at least 2.")
        check_max_num_samples(max_num_samples)
        reader = MessageReader(format)
        self.template = resolve_chat_template(tokenizer, chat_template, chat_template_file,
                                              what=f"Chat data (format={format}, files {self.file_names})")
        self.tokenizer, self.train_on, self.max_seq_length, self.predict = tokenizer, train_on, max_seq_length, predict
        self.special_tokens = special_tokens_of(tokenizer)
        self.end_of_turn_ids = end_of_turn_ids(self.template, tokenizer)  # generation stops there too

        self._messages: list[list[dict]] = []
        self._where: list[str] = []

        def check(record: dict, where: str) -> None:
            messages = reader(record, where)
            if not predict and not any(m["role"] == "assistant" for m in messages):
                fix = "add an 'output'" if reader.format == "alpaca" else "add an assistant message"
                raise ValueError(f"{where}: the conversation has no assistant turn, so there is nothing to train on or "
                                 f"score; {fix}, or put prompts without answers in predict_ds.")
            self._messages.append(messages)
            self._where.append(where)

        self.records = read_records(self.file_names, check, "Chat SFT", max_num_samples)
        self.format = reader.format
        self._measure()

    # --- building: what each conversation keeps -------------------------------------------------
    def _measure(self) -> None:
        """Encode every conversation once: drop, cut and count; ``self._kept`` is (record, messages kept)."""
        self.stats = {"read": len(self.records), "kept": 0, "dropped": {TOO_LONG: 0}, "truncated": 0,
                      "zero_trained": 0}
        self._kept: list[tuple[int, int]] = []
        self.lengths: list[int] = []  # tokens per item, e.g. for packing or length-grouped batches
        shortest_dropped = None
        for i, messages in enumerate(self._messages):
            enc = self._encode(messages, self._where[i])
            if isinstance(enc, int):  # dropped: the tokens its shortest trainable form needs
                self.stats["dropped"][TOO_LONG] += 1
                shortest_dropped = enc if shortest_dropped is None else min(shortest_dropped, enc)
                continue
            self._kept.append((i, enc.kept))
            self.lengths.append(len(enc.ids))
            self.stats["truncated"] += enc.kept < len(messages) and _has_assistant(messages[enc.kept:])
            self.stats["zero_trained"] += not any(enc.loss_mask)
        self.stats["kept"] = len(self._kept)
        if not self._kept:
            raise ValueError(f"Every record of {self.file_names} was dropped: even the shortest needs "
                             f"{shortest_dropped} tokens (its first assistant turn with what precedes it), more than "
                             f"max_seq_length={self.max_seq_length}. Raise max_seq_length.")

    def __len__(self) -> int:
        return len(self._kept)

    def __getitem__(self, idx: int) -> dict:
        i, kept = self._kept[idx]
        enc = self._encode(self._messages[i][:kept], self._where[i])
        return {"input_ids": enc.ids, "loss_mask": enc.loss_mask, "context_ids": enc.context_ids,
                "answer": enc.answer, "metadata": dict(self.records[i])}

    # --- one conversation -------------------------------------------------------------------------
    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.template.render(messages, add_generation_prompt, self.special_tokens)

    def _encode(self, messages: list[dict], where: str) -> _Encoded | int:
        """The conversation encoded to fit max_seq_length, or (dropped) the tokens it needs at least."""
        try:
            assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
            if not assistant or (self.predict and messages[-1]["role"] != "assistant"):
                return self._prompt(messages)
            return self._conversation(messages[:assistant[-1] + 1], assistant, where)
        except ValueError as e:
            if str(e).startswith(where):
                raise
            raise ValueError(f"{where}: {e}") from None

    def _prompt(self, messages: list[dict]) -> _Encoded | int:
        """A prompt to generate from (predict data ending with a user turn): nothing trained, no answer."""
        ids = self.tokenizer.encode(self.render(messages, add_generation_prompt=True))
        if len(ids) > self.max_seq_length:
            return len(ids)
        return _Encoded(ids, [0] * len(ids), ids, None, len(messages))

    def _conversation(self, messages: list[dict], assistant: list[int], where: str) -> _Encoded | int:
        # spans[j]: the characters of assistant turn assistant[j]; ends[j]: where the text through it ends
        prompts, spans, ends = [], [], []
        for a in assistant:
            prompt, through = self.render(messages[:a], add_generation_prompt=True), self.render(messages[:a + 1])
            self._check_prefix(prompt, through, f"messages[:{a}] with the generation prompt", f"messages[:{a + 1}]")
            prompts.append(prompt)
            spans.append((len(prompt), len(through)))
            ends.append(through)
        full = ends[-1]
        for j, through in enumerate(ends[:-1]):
            self._check_prefix(through, full, f"messages[:{assistant[j] + 1}]", f"messages[:{len(messages)}]")

        ids, offsets = self.tokenizer.encode_with_offsets(full)
        starts = [s for s, _ in offsets]
        fits = [bisect.bisect_left(starts, len(text)) <= self.max_seq_length for text in ends]
        k = max((j for j, ok in enumerate(fits) if ok), default=None)
        while k is not None and k < len(ends) - 1:  # cut after assistant turn k; the cut text is tokenized anew
            ids, offsets = self.tokenizer.encode_with_offsets(ends[k])
            if len(ids) <= self.max_seq_length:
                break
            k = k - 1 if k > 0 else None
        if k is None:
            return len(self.tokenizer.encode(ends[0]))
        text = ends[k]
        trained = spans[:k + 1] if self.train_on == "all_assistant" else [spans[k]]
        trained = [(s, s + len(text[s:e].rstrip())) for s, e in trained]  # not the newline after <|im_end|>
        mask = [int(any(s < e and s < end and e > start for start, end in trained)) for s, e in offsets]
        return _Encoded(ids, mask, self.tokenizer.encode(prompts[k]), messages[assistant[k]]["content"].strip(),
                        assistant[k] + 1)

    def _check_prefix(self, head: str, text: str, head_name: str, text_name: str) -> None:
        if text.startswith(head):
            return
        n = next((i for i, (x, y) in enumerate(zip(head, text)) if x != y), min(len(head), len(text)))
        raise ValueError(
            f"the chat template from {self.template.origin} renders {head_name} as text that is not the start of "
            f"{text_name} (they differ at character {n}: {head[n:n + 40]!r} vs {text[n:n + 40]!r}), so the assistant "
            "turns cannot be located for the loss mask. Templates that render a turn differently depending on what "
            "follows (e.g. dropping earlier reasoning) are not supported: set chat_template or chat_template_file "
            "to a template that renders every turn the same way wherever it appears.")


def _has_assistant(messages: list[dict]) -> bool:
    return any(m["role"] == "assistant" for m in messages)
