"""PEFT methods: one file each (config dataclass + adapter module).

Importing this package imports every module in it, so each method file registers itself
(``@register``), and exports every registered config class: a new method file needs no edit here.
"""
import importlib
import pkgutil

from nemo_peft.core.registry import METHODS
from nemo_peft.peft.base import PEFTConfig

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

from nemo_peft.peft.bottleneck import CanonicalAdaptersPEFTConfig  # noqa: E402  (NeMo's name, an alias)

_CONFIGS = {cls.__name__: cls for cls in METHODS.values() if cls.__module__.startswith(f"{__name__}.")}
globals().update(_CONFIGS)
__all__ = ["PEFTConfig", "CanonicalAdaptersPEFTConfig", *sorted(_CONFIGS)]
