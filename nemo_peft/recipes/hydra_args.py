"""What the Hydra entry points need before composing: argv rewriting and our resolvers."""
from __future__ import annotations

from importlib import resources

from omegaconf import OmegaConf

from nemo_peft.peft.schemes import parse_schemes, peft_schemes

SCHEME_KEY = "model.peft.peft_scheme"
GROUP_KEY = "peft@model.peft"


def bundled_path(rel: str) -> str:
    """Resolver ``${bundled:task/train.jsonl}``: a file shipped in nemo_peft/data/bundled."""
    return str(resources.files("nemo_peft.data").joinpath("bundled", rel))


def _names(value: str) -> list[str]:
    """``a,b`` / ``'a,b'`` / ``[a,b]`` -> ["a", "b"]; ``null`` or empty -> []."""
    value = value.strip().strip("'\"").strip("[]")
    return [] if value.lower() in ("", "null", "none") else [v.strip().strip("'\"") for v in value.split(",")]


def peft_scheme_args(argv: list[str]) -> list[str]:
    """Turn NeMo's ``model.peft.peft_scheme=ptuning,adapter`` into what Hydra composes:
    the group list ``peft@model.peft=[ptuning,adapter]`` (each scheme's conf/peft/<scheme>.yaml,
    merged in order, so every listed method's section is there to override) plus
    ``model.peft.peft_scheme='ptuning,adapter'`` (unquoted, Hydra would read a sweep).

    ``peft@model.peft=a`` or ``=[a,b]`` also selects schemes. A method whose section is
    overridden (``model.peft.p_tuning.virtual_tokens=5``) has its YAML loaded too, without being
    selected, as when every section was always present. ``peft_scheme=null`` (or empty) keeps
    meaning "no adapter". Without a selection, argv is left as it is.
    """
    sections = {section: name for name, section in peft_schemes().items()}
    selected, groups, touched, rest = None, [], [], []
    for arg in argv:
        key, sep, value = arg.partition("=")
        bare = key.lstrip("+")
        if sep and bare == SCHEME_KEY and not key.startswith("~"):
            selected = _names(value)
        elif sep and key == GROUP_KEY:
            groups = _names(value)
        else:
            parts = key.lstrip("+~").split(".")
            if sep and parts[:2] == ["model", "peft"] and len(parts) > 2 and parts[2] in sections:
                touched.append(sections[parts[2]])
            rest.append(arg)
    if selected is None and not groups:
        return list(argv)
    if selected is None:
        selected = groups
    parse_schemes(selected)  # unknown names: a clear error naming the valid schemes
    load = list(dict.fromkeys([*selected, *groups, *touched]))
    out = rest
    if load:
        out = [*out, f"{GROUP_KEY}={load[0]}" if len(load) == 1 else f"{GROUP_KEY}=[{','.join(load)}]"]
    return [*out, f"{SCHEME_KEY}='{','.join(selected)}'" if selected else f"{SCHEME_KEY}=null"]



def register_resolvers() -> None:
    if not OmegaConf.has_resolver("bundled"):
        OmegaConf.register_new_resolver("bundled", bundled_path)
