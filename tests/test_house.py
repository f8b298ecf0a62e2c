"""The package's structure, read from its source: no import circle, small modules, every Slurm command in one
module, and no task name tested outside the objectives."""

from __future__ import annotations

import ast
from pathlib import Path

from hpcvit.objectives import objective_names

PACKAGE = Path(__file__).resolve().parents[1] / "hpcvit"
MAX_LINES = 450
SLURM_COMMANDS = {"squeue", "scontrol", "scancel", "sbatch", "srun", "sacct"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that ``path`` imports, at the top or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_itself_back_in_a_circle() -> None:
    modules = _modules()
    # a package's face re-exports its modules: it is a door, not a room (its modules never import it back)
    graph = {name: {t for t in _imports(path, name, modules) if not t.startswith(name + ".")}
             for name, path in modules.items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_is_longer_than_the_limit() -> None:
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def _string_constants(path: Path) -> list[tuple[int, str, ast.AST]]:
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    return [(n.lineno, n.value, parents.get(n)) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_every_slurm_command_is_run_from_the_slurm_module() -> None:
    outside = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "scheduler" / "slurm.py":
            continue
        for line, value, parent in _string_constants(path):
            if value in SLURM_COMMANDS and isinstance(parent, (ast.List, ast.Tuple, ast.Call)):
                outside.append(f"{path.relative_to(PACKAGE.parent)}:{line} {value}")
    assert outside == []


def test_no_task_name_or_executor_name_is_tested_outside_its_registry() -> None:
    tested = []
    names = set(objective_names()) | {"local", "slurm"}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in ("objectives", "scheduler"):
            continue
        for line, value, parent in _string_constants(path):
            if value in names and isinstance(parent, ast.Compare):
                tested.append(f"{rel}:{line} == {value!r}")
    assert tested == []
