"""YAML loading that remembers the source line of every value, for errors of the form ``file:line field: msg``."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

Loc = tuple[str | int, ...]

MAX_SPEC_BYTES = 1 << 20
"""Largest spec file read (1 MiB: a spec is a page of YAML, anything larger is a mistake or an attack)."""
_STANDARD_TAGS = ("tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                  "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map")
MAX_NODES = 200_000
"""Most YAML values a spec may expand to, aliases included (an alias bomb expands exponentially)."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _one_line(text: str) -> str:
    """``text`` with control characters escaped (``\\n``): a message stays one line whatever a key holds."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


class SpecError(ValueError):
    """A job spec is invalid; ``str()`` is one line naming the file, line and field."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, field: str | None = None):
        message, field = _one_line(message), _one_line(field) if field is not None else None
        self.message, self.file, self.line, self.field = message, file, line, field
        where = _one_line(file) if file else "<spec>"
        if line is not None:  # a negative line is the k-th KEY=VALUE override of the command line
            where = f"{where}:{line}" if line >= 0 else f"{where}, override {-line}"
        super().__init__(f"{where} {field}: {message}" if field else f"{where}: {message}")


class UsageError(ValueError):
    """A command-line argument that cannot be used as given (exit 2, like a bad spec)."""


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


MAX_DEPTH = 32
"""Deepest nesting of values a spec may have (its deepest field, a model kwarg's list, is a few levels)."""


def _construct(node: yaml.Node, loader: _Loader, loc: Loc, lines: dict[Loc, int], count: list[int]) -> Any:
    count[0] += 1
    if count[0] > MAX_NODES:
        raise SpecError(f"the spec expands to more than {MAX_NODES:,} values (aliases included); refused",
                        line=node.start_mark.line + 1)
    lines[loc] = node.start_mark.line + 1
    if len(loc) > MAX_DEPTH:
        raise SpecError(f"values nested more than {MAX_DEPTH} levels deep; refused", line=node.start_mark.line + 1)
    if not node.tag.startswith(_STANDARD_TAGS):
        raise SpecError(f"YAML tag {node.tag!r} is not allowed in a spec (plain values only)",
                        line=node.start_mark.line + 1, field=".".join(map(str, loc)) or None)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise SpecError(f"a key must be a name, not a {type(key).__name__}", line=key_node.start_mark.line + 1,
                                field=".".join(map(str, loc)) or None)
            if key in out:
                raise SpecError(f"duplicate key {key!r}", line=key_node.start_mark.line + 1,
                                field=".".join(map(str, loc + (key,))))
            out[key] = _construct(value_node, loader, loc + (key,), lines, count)
            lines[loc + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, loader, loc + (i,), lines, count) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_yaml(path: str | Path) -> tuple[dict[str, Any], dict[Loc, int]]:
    """Load a YAML mapping and a map from each value's location (tuple of keys/indices) to its 1-based line."""
    path = Path(path)
    text = read_spec_text(path)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError("the spec is empty", file=str(path))
        if not isinstance(node, yaml.MappingNode):
            raise SpecError("the spec must be a mapping of fields", file=str(path), line=node.start_mark.line + 1)
        lines: dict[Loc, int] = {}
        data = _construct(node, loader, (), lines, [0])
    except SpecError as exc:
        exc.file = str(path)
        raise SpecError(exc.message, file=str(path), line=exc.line, field=exc.field) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context
        if exc.context and exc.context_mark and exc.problem_mark:
            problem = f"{problem} ({exc.context} at line {exc.context_mark.line + 1})"
        raise SpecError(f"YAML syntax: {problem}", file=str(path), line=mark.line + 1 if mark else None) from None
    except RecursionError:  # the YAML parser itself recurses once per level of nesting
        raise SpecError(f"values nested too deeply to read (a spec needs at most {MAX_DEPTH} levels)",
                        file=str(path)) from None
    finally:
        loader.dispose()
    return data, lines


def read_spec_text(path: Path) -> str:
    """The text of a spec file: a regular file of at most :data:`MAX_SPEC_BYTES` of UTF-8, else a SpecError."""
    try:
        st = os.stat(path)  # before opening: opening a FIFO would wait for a writer
    except OSError as exc:
        raise SpecError(f"cannot read spec: {exc.strerror}", file=str(path)) from None
    if not stat.S_ISREG(st.st_mode):
        raise SpecError("not a regular file (a directory, FIFO or device cannot be a spec)", file=str(path))
    if st.st_size > MAX_SPEC_BYTES:
        raise SpecError(f"the spec is {st.st_size:,} bytes, more than the {MAX_SPEC_BYTES:,} a spec may have",
                        file=str(path))
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"cannot read spec: {exc.strerror}", file=str(path)) from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"the spec is more than the {MAX_SPEC_BYTES:,} bytes a spec may have", file=str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise SpecError(f"not UTF-8 text (byte 0x{data[exc.start]:02x})", file=str(path), line=line) from None
    if "\x00" in text:
        raise SpecError("the spec contains a NUL byte (a binary file?)", file=str(path),
                        line=text[:text.index("\x00")].count("\n") + 1)
    return text.removeprefix("\ufeff")


def nearest_line(lines: dict[Loc, int], loc: Loc) -> int | None:
    """Line of ``loc`` or of its closest ancestor present in the file."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None
