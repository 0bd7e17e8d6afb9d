"""The registry of PEFT config classes, keyed by their ``method`` name.

Core only stores and looks up; the methods themselves (``nemo_peft.peft``) register
here, so an adapter checkpoint's saved config dicts become config objects again
without core knowing any method.
"""
from __future__ import annotations

METHODS: dict[str, type] = {}


def register_method(cls: type) -> type:
    """Record a config class under ``cls.method`` (a class attribute it declares)."""
    name = getattr(cls, "method", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} must declare a non-empty class attribute `method` to be registered.")
    known = METHODS.get(name)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"PEFT method {name!r} is registered twice ({known.__name__} and {cls.__name__}); "
                         "give the new method another name.")
    METHODS[name] = cls
    return cls


def config_from_dict(d: dict):
    """``{"method": name, **options}`` -> the registered config object."""
    d = dict(d)
    method = d.pop("method", None)
    if method not in METHODS:
        raise ValueError(f"Unknown PEFT method {method!r}; known methods: {sorted(METHODS)}. "
                         "Import the module that defines it before loading.")
    return METHODS[method].from_kwargs(d)
