"""JSONL supervised fine-tuning data in NeMo's shape: a prompt template, a label field, a loss mask.

Each line of a file is one JSON object, e.g. {"input": "...", "output": "..."}. The prompt template
(default "{input} {output}") names record fields; the label field's placeholder must come last,
because everything before it is the context (the prompt at generation time) and the label is what
the model learns to produce.
"""
from __future__ import annotations

import functools
import logging
import string

from nemo_peft.data.jsonl import (JsonlDataset, check_max_num_samples, check_special_token, check_text_fields,
                                  file_name_list, read_jsonl_records)
from nemo_peft.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

_FORMATTER = string.Formatter()


def _format_value(value, conversion: str | None, format_spec: str) -> str:
    return _FORMATTER.format_field(_FORMATTER.convert_field(value, conversion), format_spec)


class SFTDataset(JsonlDataset):
    """Prompt/answer pairs tokenized for causal-LM fine-tuning with the loss on the answer only.

    Items are dicts: `input_ids` (context_ids + answer_ids), `loss_mask` (1 on answer positions),
    `context_ids`, `answer` (the stripped label value, for evaluation) and `metadata` (the record).
    Records are read and checked when the dataset is built (so bad data fails before training);
    tokenization happens per item.
    """

    def __init__(
        self,
        file_names: list[str] | str,
        tokenizer: Tokenizer,
        prompt_template: str = "{input} {output}",
        label_key: str = "output",
        max_seq_length: int = 512,
        truncation_field: str = "input",
        add_bos: bool = False,
        add_eos: bool = True,
        max_num_samples: int | None = None,
        predict: bool = False,
    ):
        self.file_names = file_name_list(file_names)
        if max_seq_length < 2:
            raise ValueError(f"max_seq_length={max_seq_length} is too small: it must be at least 2.")
        check_max_num_samples(max_num_samples)
        check_special_token(tokenizer, "bos", add_bos)
        check_special_token(tokenizer, "eos", add_eos)

        self.tokenizer = tokenizer
        self.prompt_template = prompt_template
        self.label_key = label_key
        self.max_seq_length = max_seq_length
        self.truncation_field = truncation_field
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.max_num_samples = max_num_samples
        self.predict = predict  # prediction files may hold prompts only: a record without a label is a prompt
        self._warned_answer_cut = False
        self._parse_template()
        self.records = read_jsonl_records(self.file_names, self._check_record, "SFT", max_num_samples)

    # --- template -------------------------------------------------------------------------
    def _parse_template(self) -> None:
        """Split the template into the context pieces, the label placeholder and trailing text."""
        try:
            parsed = list(_FORMATTER.parse(self.prompt_template))
        except ValueError as e:
            raise ValueError(f"prompt_template {self.prompt_template!r} is malformed ({e}); "
                             "write literal braces as '{{' and '}}'.") from None
        fields = [field for _, field, _, _ in parsed if field is not None]
        for field in fields:
            if field == "" or field.isdigit():
                raise ValueError(f"prompt_template {self.prompt_template!r} has a positional placeholder; "
                                 "name record fields instead, e.g. '{input} {output}'.")
        placeholder = "{" + self.label_key + "}"
        if self.label_key not in fields:
            raise ValueError(f"prompt_template {self.prompt_template!r} has no {placeholder} placeholder for "
                             f"label_key={self.label_key!r}: add it at the end of the template or set "
                             "label_key to the field that holds the answer.")
        if fields[-1] != self.label_key or fields.count(self.label_key) > 1:
            raise ValueError(f"prompt_template {self.prompt_template!r}: the label placeholder {placeholder} "
                             "must be the last placeholder (everything before it is the prompt at "
                             "generation time); move the other placeholders before it.")
        for _, field, spec, conversion in parsed:  # every field is text: a numeric spec such as :d cannot apply
            if field is not None:
                try:
                    _format_value("", conversion, spec)
                except ValueError as e:
                    raise ValueError(f"prompt_template {self.prompt_template!r}: the format of {{{field}}} does not "
                                     f"apply to text ({e}); record fields are strings.") from None
        label_index = next(i for i, p in enumerate(parsed) if p[1] == self.label_key)
        # the literal text just before the label belongs to the context
        self._context_pieces = parsed[:label_index] + [(parsed[label_index][0], None, None, None)]
        _, _, self._label_spec, self._label_conversion = parsed[label_index]
        self._answer_tail = "".join(literal for literal, _, _, _ in parsed[label_index + 1:])
        self.context_fields = [f for f in fields if f != self.label_key]

    def _render_context(self, record: dict, overrides: dict | None = None) -> str:
        parts = []
        for literal, field, spec, conversion in self._context_pieces:
            parts.append(literal)
            if field is not None:
                value = overrides[field] if overrides and field in overrides else record[field]
                parts.append(_format_value(value, conversion, spec))
        return "".join(parts)

    def split_record(self, record: dict) -> tuple[str, str]:
        """(context, answer) text of a record; the context's trailing whitespace starts the answer.

        Moving the whitespace matters for BPE tokenizers (" output" is one token, "output" another)
        and keeps the generation prompt identical to the training context.
        """
        context = self._render_context(record)
        stripped = context.rstrip()
        if self.label_key not in record:  # a prompt to predict from: the context alone
            return stripped, ""
        label = _format_value(record[self.label_key], self._label_conversion, self._label_spec)
        return stripped, context[len(stripped):] + label + self._answer_tail

    # --- files ----------------------------------------------------------------------------
    def _check_record(self, record: dict, where: str) -> None:
        if self.label_key not in record and not self.predict:
            raise ValueError(f"{where}: record has no label field {self.label_key!r} "
                             f"(keys present: {sorted(record)}). Set label_key to the field holding the "
                             "answer, or add the field to the data.")
        for field in self.context_fields:
            if field not in record:
                raise ValueError(f"{where}: prompt_template uses {{{field}}} but the record has "
                                 f"no field {field!r} (keys present: {sorted(record)}). Fix the data or "
                                 "change prompt_template.")
        labelled = {self.label_key: "label_key"} if self.label_key in record else {}
        check_text_fields(record, where, {**{f: "prompt_template" for f in self.context_fields}, **labelled})

    # --- tokenization ---------------------------------------------------------------------
    def make_item(self, record: dict, context_ids: list[int], answer_ids: list[int]) -> dict:
        return {
            "input_ids": context_ids + answer_ids,
            "loss_mask": [0] * len(context_ids) + [1] * len(answer_ids),
            "context_ids": context_ids,
            "answer": str(record[self.label_key]).strip() if self.label_key in record else None,
            "metadata": dict(record),
        }

    @functools.cached_property
    def stats(self) -> dict:
        """What tokenizing every record gives (``data/summary.py``): read, truncated (prompt or answer
        cut to max_seq_length) and the tokens each record needs uncut."""
        tok, extra = self.tokenizer, int(self.add_bos) + int(self.add_eos)
        needed = []
        for record in self.records:
            context, answer = self.split_record(record)
            needed.append(len(tok.encode(context)) + len(tok.encode(answer)) + extra)
        return {"read": len(self.records), "dropped": {}, "needed": needed,
                "truncated": sum(n > self.max_seq_length for n in needed)}

    def tokenize_record(self, record: dict) -> tuple[list[int], list[int]]:
        """(context_ids, answer_ids) with len(context_ids) + len(answer_ids) <= max_seq_length."""
        tok = self.tokenizer
        bos = [tok.bos_id] if self.add_bos else []
        eos = [tok.eos_id] if self.add_eos else []
        context, answer = self.split_record(record)
        context_ids = bos + tok.encode(context)
        answer_ids = tok.encode(answer) + eos if self.label_key in record else []  # a prompt alone has no answer
        limit = self.max_seq_length

        # The answer is only cut when it cannot fit on its own; one context token is kept so that
        # something predicts the first answer token.
        answer_limit = limit - 1 if context_ids else limit
        if len(answer_ids) > answer_limit:
            if not self._warned_answer_cut:  # once per dataset, not once per item
                logger.warning("An answer of %d tokens exceeds max_seq_length=%d; cutting answers from the "
                               "right. Raise max_seq_length to train on whole answers.", len(answer_ids), limit)
                self._warned_answer_cut = True
            answer_ids = answer_ids[: answer_limit - len(eos)] + eos

        budget = limit - len(answer_ids)
        if len(context_ids) > budget and self.truncation_field in self.context_fields:
            context_ids = self._truncate_field(record, context_ids, budget, bos)
        if len(context_ids) > budget:
            # still too long: drop context tokens from the left, keeping BOS
            keep = max(budget - len(bos), 0)
            body = context_ids[len(bos):]
            context_ids = bos + (body[len(body) - keep:] if keep else [])
        return context_ids, answer_ids

    def _truncate_field(self, record: dict, context_ids: list[int], budget: int, bos: list[int]) -> list[int]:
        """Cut the truncation field's tokens from the right until the context fits `budget`.

        Re-tokenizing the re-formatted context can merge differently at the cut, so the fit is
        checked again and more is cut if needed. Returns the shortest attempt if nothing fits.
        """
        tok = self.tokenizer
        field_ids = tok.encode(str(record[self.truncation_field]))
        keep = len(field_ids) - (len(context_ids) - budget)
        while keep > 0:
            text = tok.decode(field_ids[:keep])
            candidate = bos + tok.encode(self._render_context(record, {self.truncation_field: text}).rstrip())
            if len(candidate) <= budget:
                return candidate
            keep -= max(1, len(candidate) - budget)
        return bos + tok.encode(self._render_context(record, {self.truncation_field: ""}).rstrip())
