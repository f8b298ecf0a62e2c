"""YAML loading that remembers the source line of every value, for errors of the form ``file:line field: msg``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

Loc = tuple[str | int, ...]


class SpecError(ValueError):
    """A job spec is invalid; ``str()`` is one line naming the file, line and field."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, field: str | None = None):
        self.message, self.file, self.line, self.field = message, file, line, field
        where = file or "<spec>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where} {field}: {message}" if field else f"{where}: {message}")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float (YAML 1.2), not as the string PyYAML 1.1 makes of it."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _construct(node: yaml.Node, loader: _Loader, loc: Loc, lines: dict[Loc, int]) -> Any:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in out:
                raise SpecError(f"duplicate key {key!r}", line=key_node.start_mark.line + 1,
                                field=".".join(map(str, loc + (key,))))
            out[key] = _construct(value_node, loader, loc + (key,), lines)
            lines[loc + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, loader, loc + (i,), lines) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_yaml(path: str | Path) -> tuple[dict[str, Any], dict[Loc, int]]:
    """Load a YAML mapping and a map from each value's location (tuple of keys/indices) to its 1-based line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read spec: {exc.strerror}", file=str(path)) from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError("the spec is empty", file=str(path))
        if not isinstance(node, yaml.MappingNode):
            raise SpecError("the spec must be a mapping of fields", file=str(path), line=node.start_mark.line + 1)
        lines: dict[Loc, int] = {}
        data = _construct(node, loader, (), lines)
    except SpecError as exc:
        exc.file = str(path)
        raise SpecError(exc.message, file=str(path), line=exc.line, field=exc.field) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context
        if exc.context and exc.context_mark and exc.problem_mark:
            problem = f"{problem} ({exc.context} at line {exc.context_mark.line + 1})"
        raise SpecError(f"YAML syntax: {problem}", file=str(path), line=mark.line + 1 if mark else None) from None
    finally:
        loader.dispose()
    return data, lines


def nearest_line(lines: dict[Loc, int], loc: Loc) -> int | None:
    """Line of ``loc`` or of its closest ancestor present in the file."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None
