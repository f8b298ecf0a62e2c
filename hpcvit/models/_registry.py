"""One registry of model builders, importable without torch.

Entries name their builder as ``"module:function"`` and are imported on first use, so validating a
5,000-run sweep does not pay for importing torch and timm. What a builder is given from the data depends on the
inputs it takes (:data:`FIXED_ARGS`): an ``image`` model ``build(in_chans: int, img_size: int, num_outputs: int = 1,
**kwargs)``, a ``hits`` model (per-event hit lists) ``build(n_features: int, **kwargs)``.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable

FIXED_ARGS = {"image": ("in_chans", "img_size", "num_outputs"), "hits": ("n_features", "n_types")}
"""The builder arguments hpcvit sets from the data, by the kind of inputs a model takes."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    target: str
    """``module:function`` of the builder."""
    family: str
    """``vit`` (plain transformer), ``windowed``, ``hybrid`` (conv + attention) or ``cnn``."""
    description: str
    inputs: str = "image"
    """What the model reads: ``image`` (C x H x W) or ``hits`` (per-event hit lists)."""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, target: str, family: str, description: str, inputs: str = "image") -> None:
    """Add a model under ``name``; names are unique."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    if inputs not in FIXED_ARGS:
        raise ValueError(f"model {name!r}: inputs {inputs!r} is none of {', '.join(FIXED_ARGS)}")
    _REGISTRY[name] = ModelEntry(name, target, family, description, inputs)


def list_models(pattern: str = "*", inputs: str | None = "image") -> list[str]:
    """Registered names matching a shell-style wildcard, sorted; those taking ``inputs`` (None: all)."""
    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"  # a plain word matches any name that holds it
    return sorted(n for n, e in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and inputs in (None, e.inputs))


def model_entry(name: str) -> ModelEntry:
    check_model_name(name)
    return _REGISTRY[name]


def check_model_name(name: str) -> None:
    """Raise ``ValueError`` naming the closest registered names when ``name`` is unknown."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (`hpcvit models` lists all {len(_REGISTRY)})")


def get_builder(name: str) -> Callable[..., Any]:
    module, _, attr = model_entry(name).target.partition(":")
    return getattr(importlib.import_module(module), attr)


def check_model_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Raise ``ValueError`` when ``kwargs`` holds a name the builder does not take, or a value of another type
    than the builder's annotation (an int where a float is asked for is fine)."""
    if not kwargs:
        return
    builder = get_builder(name)
    fixed = FIXED_ARGS[model_entry(name).inputs]
    params = inspect.signature(builder).parameters
    accepted = [p for p in params if p not in fixed and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
    hints = typing.get_type_hints(builder)
    for key, value in kwargs.items():
        if key in fixed:
            raise ValueError(f"model.kwargs.{key} is set by hpcvit from the data; remove it")
        if key not in accepted:
            raise ValueError(f"model {name!r} takes no argument {key!r}; it takes: {', '.join(accepted) or 'none'}")
        if key in hints:
            from pydantic import TypeAdapter, ValidationError

            try:
                TypeAdapter(hints[key]).validate_python(value, strict=True)
            except ValidationError:
                want = str(hints[key]).replace("typing.", "").replace("<class '", "").replace("'>", "")
                raise ValueError(f"model {name!r} argument {key!r} takes {want}, not {value!r}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"model {name!r} argument {key!r} is {value}: sizes, counts and rates are not negative")
        default = params[key].default
        if (value == 0 and isinstance(value, int) and not isinstance(value, bool) and isinstance(default, int)
                and not isinstance(default, bool) and default > 0):
            raise ValueError(f"model {name!r} argument {key!r} is 0: it must be at least 1 (default {default})")


def check_inputs(name: str, inputs: str) -> None:
    """Raise ``ValueError`` when model ``name`` reads other inputs than ``inputs`` (what the task's data is)."""
    entry = model_entry(name)
    if entry.inputs != inputs:
        fit = ", ".join(list_models(inputs=inputs)) or "none"
        raise ValueError(f"model {name!r} reads {entry.inputs}, this task's data are {inputs} (its models: {fit})")


def build_model(name: str, in_chans: int, img_size: int, num_outputs: int = 1, **kwargs: Any) -> Any:
    """Build the registered model for images of ``in_chans`` x ``img_size`` x ``img_size``."""
    check_inputs(name, "image")
    check_model_kwargs(name, kwargs)
    return get_builder(name)(in_chans=in_chans, img_size=img_size, num_outputs=num_outputs, **kwargs)


def build_hit_model(name: str, n_features: int, n_types: int, **kwargs: Any) -> Any:
    """Build the registered model for hit lists of ``n_features`` numbers per hit and ``n_types`` particle types."""
    check_inputs(name, "hits")
    check_model_kwargs(name, kwargs)
    return get_builder(name)(n_features=n_features, n_types=n_types, **kwargs)
