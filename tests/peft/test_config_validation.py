"""PEFT options are checked when the config is made, and the error names the Hydra key to fix."""
import math
import os

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nemo_peft.convert.hf_dir import read_json
from nemo_peft.convert.hf_peft_file import read_hf_peft
from nemo_peft.peft import (CanonicalAdaptersPEFTConfig, DoraPEFTConfig, IA3PEFTConfig, LoraPEFTConfig,
                            PrefixTuningPEFTConfig, PromptTuningPEFTConfig, PtuningPEFTConfig, QLoraPEFTConfig)
from nemo_peft.peft.schemes import configs_from_peft_section
from nemo_peft.recipes.hydra_args import peft_scheme_args, register_resolvers
from tests.helpers import make_model

CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "conf")
LORA_LIKE = [LoraPEFTConfig, DoraPEFTConfig, QLoraPEFTConfig]
SHIPPED = sorted(f[:-5] for f in os.listdir(os.path.join(CONF, "peft")) if f.endswith(".yaml"))  # conf/peft/*.yaml


def test_message_names_the_class_the_value_the_rule_and_the_hydra_key():
    with pytest.raises(ValueError) as err:
        LoraPEFTConfig(alpha=-4)
    assert str(err.value) == "LoraPEFTConfig.alpha=-4: must be > 0 (model.peft.lora_tuning.alpha)"
    with pytest.raises(ValueError) as err:
        LoraPEFTConfig(dropout=1.5)
    assert str(err.value) == "LoraPEFTConfig.dropout=1.5: must be >= 0 and < 1 (model.peft.lora_tuning.dropout)"


# (config class, option, bad value, rule in the message)
BAD = [
    *[(cls, "dim", v, rule) for cls in LORA_LIKE
      for v, rule in ((0, "must be >= 1"), (-2, "must be >= 1"), (2.5, "must be an integer"), ("8", "an integer"))],
    *[(cls, "alpha", v, rule) for cls in LORA_LIKE
      for v, rule in ((0, "must be > 0"), (-4, "must be > 0"), (math.nan, "finite"), (math.inf, "finite"))],
    *[(cls, "dropout", v, "must be >= 0 and < 1") for cls in LORA_LIKE for v in (1.0, 1.5, -0.1)],
    (LoraPEFTConfig, "use_rslora", "false", "must be true or false"),
    (LoraPEFTConfig, "layer_selection", [0, 2], "[0] are not layer numbers"),
    (LoraPEFTConfig, "layer_selection", "1,2", "must be a list"),
    (LoraPEFTConfig, "dropout_position", "mid", "choose one of ['post', 'pre']"),
    (LoraPEFTConfig, "lora_A_init_method", "he", "choose one of"),
    (QLoraPEFTConfig, "block_size", 63, "must be even"),
    (QLoraPEFTConfig, "block_size", 0, "must be >= 2"),
    (QLoraPEFTConfig, "double_quant", "yes", "must be true or false"),
    (IA3PEFTConfig, "layer_selection", [1.5], "are not layer numbers"),
    (CanonicalAdaptersPEFTConfig, "adapter_dim", 0, "must be >= 1"),
    (CanonicalAdaptersPEFTConfig, "adapter_dropout", 1.0, "must be >= 0 and < 1"),
    (CanonicalAdaptersPEFTConfig, "layer_selection", [-1], "are not layer numbers"),
    (CanonicalAdaptersPEFTConfig, "norm_position", "mid", "choose one of"),
    *[(PtuningPEFTConfig, name, v, rule) for name in ("virtual_tokens", "bottleneck_dim", "embedding_dim")
      for v, rule in ((0, "must be >= 1"), (1.5, "must be an integer"))],
    (PtuningPEFTConfig, "init_std", 0, "must be > 0"),
    (PtuningPEFTConfig, "init_std", -0.1, "must be > 0"),
    (PromptTuningPEFTConfig, "virtual_tokens", 0, "must be >= 1"),
    (PromptTuningPEFTConfig, "init_std", 0.0, "must be > 0"),
    (PromptTuningPEFTConfig, "init_token_ids", [3, -1], "token ids"),
    (PrefixTuningPEFTConfig, "num_virtual_tokens", 0, "must be >= 1"),
    (PrefixTuningPEFTConfig, "layer_selection", [0], "are not layer numbers"),
    (PrefixTuningPEFTConfig, "prefix_projection", "true", "must be true or false"),
]


@pytest.mark.parametrize("cls,name,value,rule", BAD, ids=lambda x: getattr(x, "__name__", repr(x)))
def test_bad_option_is_named_with_its_hydra_key(cls, name, value, rule):
    with pytest.raises(ValueError) as err:
        cls(**{name: value})
    msg = str(err.value)
    assert msg.startswith(f"{cls.__name__}.{name}={value!r}: ")
    assert rule in msg and msg.endswith(f"(model.peft.{cls.section}.{name})")


def test_prefix_encoder_hidden_size_is_checked_only_with_the_projection():
    assert PrefixTuningPEFTConfig(encoder_hidden_size=0).encoder_hidden_size == 0  # unused
    with pytest.raises(ValueError, match=r"encoder_hidden_size=0: must be >= 1 \(model.peft.prefix_tuning"):
        PrefixTuningPEFTConfig(prefix_projection=True, encoder_hidden_size=0)


def test_pattern_values_name_their_entry():
    with pytest.raises(ValueError) as err:
        DoraPEFTConfig(rank_pattern={"q_proj": 4, "linear_fc2": 0})
    assert str(err.value).startswith("DoraPEFTConfig.rank_pattern['linear_fc2']=0: must be > 0")
    assert str(err.value).endswith("(model.peft.dora_tuning.rank_pattern)")


def test_valid_edge_values_are_kept_and_integers_normalised():
    cfg = LoraPEFTConfig(dim=8.0, alpha=0.001, dropout=0.0, layer_selection=[1.0, 3])
    assert (cfg.dim, type(cfg.dim), cfg.layer_selection) == (8, int, [1, 3])
    assert LoraPEFTConfig(dropout=0.999).dropout == 0.999
    assert PromptTuningPEFTConfig(init="vocab", init_std=0).init_std == 0  # init_std is unused by "vocab"


def compose_finetune(overrides):
    register_resolvers()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("finetune", overrides=peft_scheme_args(overrides))


@pytest.mark.parametrize("scheme", SHIPPED)
def test_every_shipped_default_is_valid(scheme):
    cfg = compose_finetune(["model=tiny", f"model.peft.peft_scheme={scheme}"])
    assert [c.method for c in configs_from_peft_section(cfg.model.peft)] == [scheme]


@pytest.mark.parametrize("override", ["model.peft.lora_tuning.alpha=-4", "model.peft.lora_tuning.dropout=1.5",
                                      "model.peft.p_tuning.init_std=0"])
def test_the_named_key_is_the_hydra_key_that_was_set(override):
    key, value = override.split("=")
    scheme = "lora" if "lora_tuning" in key else "ptuning"
    cfg = compose_finetune(["model=tiny", f"model.peft.peft_scheme={scheme}", override])
    with pytest.raises(ValueError) as err:
        configs_from_peft_section(cfg.model.peft)
    assert str(err.value).endswith(f"({key})")
    assert OmegaConf.select(cfg, key) == float(value)


# --- config files: a damaged file is an error naming its path ---------------------------------------------------

DAMAGED = {"truncated": b'{"format": "nemo_peft", ', "not_utf8": b'\xff\xfe{"a": 1}'}


@pytest.mark.parametrize("content", DAMAGED.values(), ids=DAMAGED.keys())
def test_damaged_adapter_config_names_its_path(tmp_path, content):
    (tmp_path / "adapter_config.json").write_bytes(content)
    with pytest.raises(ValueError) as err:
        make_model("llama").load_adapters(str(tmp_path))
    assert str(err.value).startswith(f"{str(tmp_path / 'adapter_config.json')!r} is not valid JSON")


@pytest.mark.parametrize("content", DAMAGED.values(), ids=DAMAGED.keys())
def test_damaged_hf_checkpoint_config_names_its_path(tmp_path, content):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(ValueError) as err:
        read_json(str(tmp_path / "config.json"))
    assert str(err.value).startswith(f"{str(tmp_path / 'config.json')!r} is not valid JSON")


def test_non_utf8_hf_peft_adapter_config_names_its_path(tmp_path):
    (tmp_path / "adapter_config.json").write_bytes(DAMAGED["not_utf8"])
    with pytest.raises(ValueError) as err:  # UnicodeDecodeError is a ValueError too
        read_hf_peft(str(tmp_path))
    assert str(tmp_path / "adapter_config.json") in str(err.value)
