"""ChatSFTDataset: the trained tokens are exactly the assistant turns and their end-of-turn tokens
(checked by decoding with the real SmolLM2 tokenizer), evaluation prompts and answers, truncation
and its counts, prompts for prediction, the data module choosing the dataset, and one training
and evaluation step through Lightning."""
import json
import logging

import lightning as L
import pytest

from nemo_peft.data import SFTDataModule, SFTDataset, collate_sft
from nemo_peft.data.chat_dataset import ChatSFTDataset
from nemo_peft.data.seq2seq_dataset import Seq2SeqDataModule
from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.models.gpt_sft import GPTSFTModel
from nemo_peft.peft.lora import LoraPEFTConfig
from tests.data.chat_refs import (CHATML_TEMPLATE, CONVERSATIONS, LLAMA3_SPECIALS, LLAMA3_TEMPLATE, smollm2,
                                  transformers_render, with_specials)
from tests.helpers import make_model


def runs(values: list[int], ids: list[int]) -> list[list[int]]:
    """The maximal runs of ids where values is 1."""
    out, cur = [], []
    for v, i in zip(values, ids):
        if v:
            cur.append(i)
        elif cur:
            out, cur = out + [cur], []
    return out + [cur] if cur else out


def trained_text(tok, item) -> list[str]:
    return [tok.decode(r, skip_special_tokens=False) for r in runs(item["loss_mask"], item["input_ids"])]


def dataset(write_jsonl, tok, conversations, **kwargs):
    return ChatSFTDataset(write_jsonl([{"messages": c} for c in conversations]), tok, **kwargs)


def assistants(conversation):
    return [m["content"] for m in conversation if m["role"] == "assistant"]


# --- the loss mask --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["single", "multi", "system"])
@pytest.mark.parametrize("train_on", ["all_assistant", "last_assistant"])
def test_smollm2_mask_is_exactly_the_assistant_turns(write_jsonl, name, train_on):
    tok, conversation = smollm2(), CONVERSATIONS[name]
    item = dataset(write_jsonl, tok, [conversation], train_on=train_on)[0]
    expected = [c + "<|im_end|>" for c in assistants(conversation)]
    assert trained_text(tok, item) == (expected if train_on == "all_assistant" else expected[-1:])
    # the same text and tokens as transformers' rendering; template markers are the special tokens
    reference = transformers_render(tok, tok.chat_template, conversation, False)
    assert item["input_ids"] == tok.encode(reference)
    turns = len(conversation) + (conversation[0]["role"] != "system")  # SmolLM2 adds a default system turn
    assert item["input_ids"].count(tok.backend.token_to_id("<|im_start|>")) == turns
    assert item["input_ids"].count(tok.backend.token_to_id("<|im_end|>")) == turns
    untrained = tok.decode([i for i, m in zip(item["input_ids"], item["loss_mask"]) if not m], False)
    assert conversation[0]["content"] in untrained and "<|im_start|>assistant\n" in untrained
    # evaluation: the prompt before the last assistant turn (with the generation prompt) and its answer
    last = max(i for i, m in enumerate(conversation) if m["role"] == "assistant")
    assert tok.decode(item["context_ids"], False) == transformers_render(tok, tok.chat_template, conversation[:last],
                                                                         True)
    assert item["answer"] == conversation[last]["content"].strip()
    assert item["metadata"] == {"messages": conversation}


def test_llama3_template_mask(write_jsonl):
    tok = with_specials(smollm2(), LLAMA3_SPECIALS, LLAMA3_TEMPLATE, bos="<|begin_of_text|>", eos="<|eot_id|>")
    conversation = [*CONVERSATIONS["system"][:3], {"role": "assistant", "content": "  Padded answer \n"}]
    item = dataset(write_jsonl, tok, [conversation])[0]
    assert trained_text(tok, item) == ["Blue.<|eot_id|>", "Padded answer<|eot_id|>"]  # the template trims
    assert item["input_ids"][0] == tok.bos_id and item["loss_mask"][0] == 0
    assert item["input_ids"] == tok.encode(transformers_render(tok, LLAMA3_TEMPLATE, conversation, False))
    assert tok.decode(item["context_ids"], False).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_config_template_overrides_the_models(write_jsonl):
    tok = smollm2()
    item = dataset(write_jsonl, tok, [CONVERSATIONS["multi"]], chat_template=CHATML_TEMPLATE)[0]
    assert trained_text(tok, item) == ["Blue.<|im_end|>", "Green, usually\nin spring.<|im_end|>"]
    assert "SmolLM" not in tok.decode(item["input_ids"], False)  # plain ChatML has no default system prompt


# --- truncation and counts ------------------------------------------------------------------------

def test_truncation_drops_trailing_turns_and_counts(write_jsonl):
    tok = smollm2()
    long_turns = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "first answer"},
                  {"role": "user", "content": "two " * 30}, {"role": "assistant", "content": "second answer"}]
    first_too_long = [{"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "never"}]
    full = len(dataset(write_jsonl, tok, [long_turns])[0]["input_ids"])
    ds = dataset(write_jsonl, tok, [CONVERSATIONS["single"], long_turns, first_too_long, long_turns[:3]],
                 max_seq_length=full - 1)
    assert ds.stats == {"read": 4, "kept": 3, "dropped": {"too_long": 1}, "truncated": 1, "zero_trained": 0}
    cut = ds[1]
    assert trained_text(tok, cut) == ["first answer<|im_end|>"] and cut["answer"] == "first answer"
    assert len(cut["input_ids"]) <= full - 1 and ds.lengths[1] == len(cut["input_ids"])
    assert cut["metadata"] == {"messages": long_turns}  # the record itself, whole
    assert trained_text(tok, ds[2]) == ["first answer<|im_end|>"]  # a trailing user turn is not a cut
    assert all(len(item["input_ids"]) <= full - 1 for item in ds)
    with pytest.raises(ValueError, match=r"Every record of .* was dropped: even the shortest needs \d+ tokens .*Raise "
                                         "max_seq_length"):
        dataset(write_jsonl, tok, [first_too_long], max_seq_length=30)


def test_prediction_prompts(write_jsonl):
    tok = smollm2()
    prompts = [[{"role": "user", "content": "Hi"}], CONVERSATIONS["open"], CONVERSATIONS["single"]]
    ds = dataset(write_jsonl, tok, prompts, predict=True)
    assert ds.stats["zero_trained"] == 2 and len(ds) == 3
    for item, conversation in zip(ds, prompts[:2]):
        assert item["answer"] is None and not any(item["loss_mask"]) and item["input_ids"] == item["context_ids"]
        assert tok.decode(item["context_ids"], False) == transformers_render(tok, tok.chat_template, conversation, True)
    assert ds[2]["answer"] == "Blue."  # a prompt with its expected answer
    batch = collate_sft([ds[0], ds[2]], pad_id=tok.pad_id)
    assert batch["answers"] == [None, "Blue."]


# --- errors ---------------------------------------------------------------------------------------

def test_conversation_without_assistant_is_an_error_outside_prediction(write_jsonl):
    with pytest.raises(ValueError, match=r"data.jsonl, line 2: the conversation has no assistant turn.*add an "
                                         "assistant message, or put prompts without answers in predict_ds"):
        dataset(write_jsonl, smollm2(), [CONVERSATIONS["single"], [{"role": "user", "content": "Hi"}]])
    path = write_jsonl([{"instruction": "Say hi"}])
    with pytest.raises(ValueError, match="line 1: the conversation has no assistant turn.*add an 'output'"):
        ChatSFTDataset(path, smollm2())


def test_template_that_rewrites_earlier_turns_is_refused(write_jsonl):
    template = ("{% for m in messages %}{{ m.role }}: {{ m.content }}{% if loop.last %} (last){% endif %}\n"
                "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(ValueError, match=r"line 1: the chat template from the data config's chat_template renders "
                                         r"messages\[:1\] with the generation prompt as text that is not the start "
                                         r"of messages\[:2\].*set chat_template or chat_template_file"):
        dataset(write_jsonl, smollm2(), [CONVERSATIONS["single"]], chat_template=template)


def test_template_errors_name_the_record(write_jsonl):
    template = "{% if messages[0].role != 'system' %}{{ raise_exception('A system prompt is required') }}{% endif %}"
    with pytest.raises(ValueError, match=r"data.jsonl, line 1: The chat template from the data config's chat_template "
                                         "rejected the conversation.*A system prompt is required"):
        dataset(write_jsonl, smollm2(), [CONVERSATIONS["single"]], chat_template=template)


def test_bad_options(write_jsonl, tokenizer):
    with pytest.raises(ValueError, match="train_on='first'; valid: all_assistant, last_assistant"):
        dataset(write_jsonl, smollm2(), [CONVERSATIONS["single"]], train_on="first")
    with pytest.raises(ValueError, match="needs a chat template, but the model's tokenizer has none"):
        dataset(write_jsonl, tokenizer, [CONVERSATIONS["single"]])


# --- the data module, collate, one training and evaluation step ----------------------------------

def test_data_module_picks_the_dataset_by_format(write_jsonl, tmp_path, caplog):
    tok = smollm2()
    chat = write_jsonl([{"messages": CONVERSATIONS["multi"]}], "chat.jsonl")
    plain = write_jsonl([{"input": "a", "output": "b"}], "plain.jsonl")
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Say hi", "input": "", "output": "hi"}]))
    with caplog.at_level(logging.WARNING):
        dm = SFTDataModule(tok, train_ds={"file_names": chat, "prompt_template": "{input} {output}", "add_eos": True,
                                          "label_key": "answer"},
                           validation_ds={"file_names": plain}, test_ds={"file_names": str(alpaca)},
                           predict_ds={"file_names": chat, "format": "messages", "train_on": "last_assistant"})
        dm.setup()
    assert "['label_key'] are prompt_template options" in caplog.text  # non-default values only
    kinds = {split: type(ds) for split, ds in dm.datasets.items()}
    assert kinds == {"train": ChatSFTDataset, "validation": SFTDataset, "test": ChatSFTDataset,
                     "predict": ChatSFTDataset}
    assert dm.datasets["test"].format == "alpaca" and dm.datasets["predict"].predict
    custom = SFTDataModule(tok, train_ds={"file_names": chat, "prompt_template": "{messages}", "label_key": "messages"})
    with pytest.raises(ValueError, match="field 'messages' .* is a JSON array"):  # a template of its own: prompt data
        custom.setup("fit")
    for cfg, match in [({"format": "yaml"}, "format='yaml' is not a data format"),
                       ({"file_names": plain, "chat_template": "x"}, r"\['chat_template'\] apply to chat data"),
                       ({"format": "prompt_template"}, "no label field 'output'")]:
        with pytest.raises(ValueError, match=match):
            SFTDataModule(tok, train_ds={"file_names": chat, **cfg}).setup("fit")
    with pytest.raises(ValueError, match=r"train_ds has \['format'\]: chat formats .* GPT-style models only"):
        Seq2SeqDataModule(tok, train_ds={"file_names": chat, "format": "messages"})


def test_one_training_and_evaluation_step(write_jsonl):
    tok = Tokenizer.byte_level()
    tok.chat_template = CHATML_TEMPLATE
    path = write_jsonl([{"messages": c} for c in (CONVERSATIONS["single"], CONVERSATIONS["system"])] * 2)
    dm = SFTDataModule(tok, train_ds={"file_names": path, "max_seq_length": 256, "micro_batch_size": 4},
                       validation_ds={"file_names": path, "max_seq_length": 256, "micro_batch_size": 4})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    items = [dm.datasets["train"][i] for i in range(4)]
    assert int(batch["loss_mask"].sum()) == sum(sum(item["loss_mask"][1:]) for item in items)
    model = make_model("llama", vocab_size=tok.vocab_size)
    model.add_adapter(LoraPEFTConfig(target_modules=["all"], dim=2))
    module = GPTSFTModel(model, tok, generation={"max_new_tokens": 2})
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    metrics = trainer.callback_metrics
    assert {"train_loss", "val_loss", "val_exact_match"} <= set(metrics) and float(metrics["val_loss"]) > 0
