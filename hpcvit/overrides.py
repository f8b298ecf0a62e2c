"""Dotted ``key=value`` overrides given after a spec on the command line (``optim.epochs=2``).

Each value is read as YAML, like the file's values; a list given to a field that is not a list sweeps it
(``optim.lr=[1e-3,3e-4]`` adds a grid axis). An override replaces what the file says (a swept key given one
value is no longer swept). Errors name the override: its values carry the line number ``-k`` for the k-th
override, which :class:`~hpcvit.yamlio.SpecError` prints as ``override k``.
"""

from __future__ import annotations

import copy
import re
import typing
from typing import Any

from pydantic import BaseModel

from hpcvit.config import JobSpec
from hpcvit.yamlio import Loc, SpecError

_KEY = re.compile(r"^[A-Za-z_][\w]*(?:\.[\w.\-]+)*$")


def parse_value(text: str) -> Any:
    """A value as the spec file would read it (YAML 1.2 floats: ``1e-3`` is a number)."""
    import yaml

    from hpcvit.yamlio import _Loader

    try:
        return yaml.load(text, Loader=_Loader) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise ValueError(str(exc).splitlines()[0]) from None


def _takes_list(dotted: str) -> bool:
    """Whether the field ``dotted`` of :class:`JobSpec` holds a list (a list given to it is its value)."""
    model: Any = JobSpec
    for key in dotted.split("."):
        fields = getattr(model, "model_fields", {})
        if key not in fields:
            return False
        annotation = fields[key].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
            continue
        kinds = [annotation, *typing.get_args(annotation)]
        return any(typing.get_origin(k) in (list, tuple) or k in (list, tuple) for k in kinds)
    return False


def apply(raw: dict[str, Any], lines: dict[Loc, int], overrides: list[str], file: str
          ) -> tuple[dict[str, Any], dict[Loc, int]]:
    """``raw`` (the parsed spec) with ``overrides`` applied, and the lines with each overridden field at its
    override (``-k``)."""
    raw, lines = copy.deepcopy(raw), dict(lines)
    for k, text in enumerate(overrides, start=1):
        key, sep, value_text = text.partition("=")
        key = key.strip()
        if not sep or not _KEY.fullmatch(key):
            raise SpecError(f"{text!r} is not KEY=VALUE with a dotted key (e.g. optim.epochs=2)", file=file, line=-k)
        try:
            value = parse_value(value_text)
        except ValueError as exc:
            raise SpecError(f"value {value_text!r} is not valid YAML ({exc})", file=file, line=-k, field=key) from None
        for block in ("grid", "zip"):
            if key.startswith(f"sweep.{block}."):
                swept = key.removeprefix(f"sweep.{block}.")
                raw.setdefault("sweep", {}).setdefault(block, {})[swept] = value
                lines[("sweep", block, swept)] = -k
                break
        else:
            sweep = raw.get("sweep") or {}
            for block in ("grid", "zip"):
                if isinstance(sweep.get(block), dict):
                    sweep[block].pop(key, None)  # the command line fixes (or re-sweeps) what the file swept
            if isinstance(value, list) and not _takes_list(key):
                if not value:
                    raise SpecError("an empty list sweeps nothing: give one value, or several in [...]", file=file,
                                    line=-k, field=key)
                raw.setdefault("sweep", {}).setdefault("grid", {})[key] = value
                lines[("sweep", "grid", key)] = -k
            else:
                for made in _set(raw, key, value, file, k):  # sections the override made: their errors are its own
                    lines[made] = -k
            lines[tuple(key.split("."))] = -k
    return raw, lines


def _set(raw: dict[str, Any], key: str, value: Any, file: str, k: int) -> list[Loc]:
    """Set ``key`` in ``raw``; returns the sections it had to make on the way."""
    node = raw
    parts = key.split(".")
    made: list[Loc] = []
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
            made.append(tuple(parts[:i + 1]))
        if not isinstance(child, dict):
            raise SpecError(f"{'.'.join(parts[:i + 1])} is not a section, it has no field {parts[i + 1]!r}",
                            file=file, line=-k, field=key)
        node = child
    node[parts[-1]] = value
    return made
