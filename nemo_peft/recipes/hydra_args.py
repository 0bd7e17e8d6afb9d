"""What the Hydra entry points need before composing: argv rewriting and our resolvers."""
from __future__ import annotations

from importlib import resources

from omegaconf import OmegaConf


def bundled_path(rel: str) -> str:
    """Resolver ``${bundled:task/train.jsonl}``: a file shipped in nemo_peft/data/bundled."""
    return str(resources.files("nemo_peft.data").joinpath("bundled", rel))


def quote_comma_lists(argv: list[str], keys=("model.peft.peft_scheme",)) -> list[str]:
    """Let ``model.peft.peft_scheme=ptuning,adapter`` mean a comma list (NeMo's syntax);
    Hydra would otherwise read an unquoted comma as a multirun sweep."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") in keys and "," in value and value[:1] not in "'\"[":
            arg = f"{key}='{value}'"
        out.append(arg)
    return out


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("bundled"):
        OmegaConf.register_new_resolver("bundled", bundled_path)
