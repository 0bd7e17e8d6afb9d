"""Rendering a conversation with a model's Jinja chat template, as transformers'
``apply_chat_template(..., tokenize=False)`` does: the same sandboxed environment (trim_blocks,
lstrip_blocks, loop controls, ``raise_exception``, a ``tojson`` that does not escape HTML,
``strftime_now``, the ``{% generation %}`` tag) and the same variables (messages,
add_generation_prompt, tools, documents and the tokenizer's special-token strings).

One difference on purpose: a template that reads a variable nobody passed (``{{ date }}``,
``{{ bos_token }}`` for a tokenizer without a BOS) is an error naming the variable and the
template line, where transformers prints nothing. ``is defined`` tests and the ``default``
filter still work, and a key missing from a message (``message.tool_calls``) is still undefined
and falsy, as in transformers.
"""
from __future__ import annotations

import json
import os
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

from nemo_peft.data.tokenizer import Tokenizer

_TEMPLATE_FRAME = "<template>"  # the file name Jinja gives a from_string template's traceback frames


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (transformers marks assistant text with it):
    rendered as its body; our loss mask comes from rendering prefixes, not from the tag."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


class UndefinedVariable(jinja2.exceptions.UndefinedError):
    def __init__(self, name: str):
        super().__init__(f"{name!r} is undefined")
        self.name = name


class _StrictTopLevel(jinja2.Undefined):
    """Undefined that fails when a template *uses* a top-level name nobody passed; an attribute or
    key missing from a passed object (``message.tool_calls``) stays a plain, falsy Undefined."""

    __slots__ = ()

    def _strict(self) -> bool:
        return self._undefined_obj is missing and self._undefined_hint is None

    def _fail(self):
        if self._strict():
            raise UndefinedVariable(self._undefined_name)

    def __str__(self):
        self._fail()
        return super().__str__()

    def __iter__(self):
        self._fail()
        return super().__iter__()

    def __bool__(self):
        self._fail()
        return super().__bool__()

    def __len__(self):
        self._fail()
        return super().__len__()

    def __eq__(self, other):
        self._fail()
        return super().__eq__(other)

    def __ne__(self, other):
        self._fail()
        return super().__ne__(other)

    def __hash__(self):
        return id(type(self))

    def __getattr__(self, name):
        if name[:2] == "__":
            raise AttributeError(name)
        self._fail()
        return super().__getattr__(name)

    def __getitem__(self, key):
        self._fail()
        return super().__getitem__(key)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML characters (<, >, &), which would change the prompt
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, undefined=_StrictTopLevel,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class ChatTemplate:
    """A compiled chat template; ``origin`` (a file, GGUF metadata, a config key) names it in errors."""

    def __init__(self, source: str, origin: str):
        if not isinstance(source, str) or not source.strip():
            raise ValueError(f"The chat template from {origin} is empty: give a Jinja template string.")
        self.source, self.origin = source, origin
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise ValueError(f"The chat template from {origin} is not valid Jinja: {e.message} (template line "
                             f"{e.lineno}: {_line(source, e.lineno)!r}). Fix the template.") from None

    def __getstate__(self):  # data loader workers may pickle the dataset; compiled templates do not pickle
        return {"source": self.source, "origin": self.origin}

    def __setstate__(self, state):
        self.__init__(state["source"], state["origin"])

    def render(self, messages: list[dict], add_generation_prompt: bool = False, special_tokens: dict | None = None,
               **variables) -> str:
        """The conversation as text. ``special_tokens``: {"bos_token": "<s>", ...} (None values are
        left undefined, so a template that prints one is an error naming it)."""
        given = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        context = {**given, "tools": None, "documents": None, **variables}
        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt, **context)
        except UndefinedVariable as e:
            hint = (" (the tokenizer has no such token: supply a template that does not print it)"
                    if e.name.endswith("_token") else "")
            raise ValueError(f"The chat template from {self.origin} uses the variable {e.name!r}{_where(e)}, which is "
                             f"not defined{hint}. Templates get messages, add_generation_prompt, tools, documents "
                             f"and the tokenizer's special tokens ({', '.join(sorted(given)) or 'none'}); fix the "
                             "template or write `{% if " + e.name + " is defined %}`.") from None
        except jinja2.UndefinedError as e:  # an operation on an undefined value, e.g. `messages[9].content + x`
            raise ValueError(f"The chat template from {self.origin} failed on an undefined value{_where(e)}: "
                             f"{(e.message or '').rstrip('.')}. Fix the template or the data it reads.") from None
        except jinja2.TemplateError as e:  # raise_exception(...) in the template, or a sandbox refusal
            raise ValueError(f"The chat template from {self.origin} rejected the conversation{_where(e)}: "
                             f"{(e.message or type(e).__name__).rstrip('.')}.") from None
        except Exception as e:  # noqa: BLE001 - Python errors inside the template, e.g. 'a' + 1
            raise ValueError(f"The chat template from {self.origin} failed{_where(e)}: {type(e).__name__}: {e}."
                             ) from None


def end_of_turn_ids(template: ChatTemplate, tokenizer: Tokenizer) -> list[int]:
    """The special token the template writes right after an assistant's content (``<|im_end|>``,
    ``<|eot_id|>``, ...): generation stops there, as at EOS. Read from a rendered probe, not hard-coded."""
    mark = "\u2063probe\u2063"
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": mark}]
    for probe in ([{"role": "system", "content": "hi"}, *turns], turns):  # some templates require a system turn
        try:
            after = template.render(probe, special_tokens=special_tokens_of(tokenizer)).split(mark, 1)[-1]
        except ValueError:  # the template rejects the probe: the data's own conversations will say why
            continue
        ids = tokenizer.encode(after)[:1]
        return ids if ids and tokenizer.decode(ids, skip_special_tokens=True) == "" else []
    return []


def special_tokens_of(tokenizer: Tokenizer) -> dict:
    return {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token}


def resolve_chat_template(tokenizer: Tokenizer, chat_template: str | None = None,
                          chat_template_file: str | None = None, what: str = "chat data") -> ChatTemplate:
    """The template to use: the config's ``chat_template`` string, else ``chat_template_file``, else
    the tokenizer's own (the model's); none of them is an error saying how to supply one."""
    if chat_template is not None and chat_template_file is not None:
        raise ValueError("Both chat_template and chat_template_file are set; keep one.")
    if chat_template is not None:
        return ChatTemplate(chat_template, "the data config's chat_template")
    if chat_template_file is not None:
        path = os.fspath(chat_template_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"chat_template_file {path!r} does not exist; point it at a Jinja template file "
                                    "(paths are relative to the working directory).")
        with open(path, encoding="utf-8", newline="") as f:
            return ChatTemplate(f.read(), path)
    if tokenizer.chat_template is not None:
        return ChatTemplate(tokenizer.chat_template, tokenizer.chat_template_source or "the tokenizer")
    raise ValueError(f"{what} needs a chat template, but the model's tokenizer has none. Supply one: set "
                     "chat_template to a Jinja template string in the split's data config, or chat_template_file "
                     "to a .jinja file, or load a model whose files carry one (a model directory with "
                     "chat_template.jinja, an HF tokenizer_config.json with chat_template, or a GGUF with "
                     "tokenizer.chat_template).")


def _line(source: str, lineno: int | None) -> str:
    lines = source.splitlines()
    return lines[lineno - 1].strip()[:80] if lineno and 0 < lineno <= len(lines) else ""


def _where(error: BaseException) -> str:
    """" (template line N)" from the traceback frames Jinja maps back to template lines."""
    lineno, tb = None, error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _TEMPLATE_FRAME:
            lineno = tb.tb_lineno
        tb = tb.tb_next
    return f" (template line {lineno})" if lineno else ""
