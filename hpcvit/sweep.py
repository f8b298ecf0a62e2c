"""Expand a spec file's ``sweep:`` block into validated runs."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from hpcvit.config import JobSpec, SearchSpec, SweepSpec
from hpcvit.yamlio import UsageError, Loc, SpecError, load_yaml, nearest_line

# Top-level sections every run of a sweep shares.
SWEEP_FIXED = ("name", "executor", "output_dir", "tracking", "resources")


@dataclass(frozen=True)
class Run:
    """One expanded run: its index in the sweep (stable for the sweep's life) and its resolved spec."""

    index: int
    spec: JobSpec
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Short human name: the model plus the swept values other than the model."""
        parts = [self.spec.model.name]
        for key, value in self.overrides.items():
            if key == "model.name":
                continue
            if isinstance(value, dict):
                parts += [f"{k}={v}" for k, v in value.items()]
            else:
                parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
        return " ".join(parts)


@dataclass(frozen=True)
class Sweep:
    """A spec file expanded: the raw sweep-level spec, its runs, and the line of each value in the file."""

    file: str
    raw: dict[str, Any]
    runs: list[Run]
    lines: dict[Loc, int] = field(default_factory=dict, repr=False)
    search: SearchSpec | None = None
    """The adaptive search over the runs (``sweep.search``), if any."""
    overrides: tuple[str, ...] = ()
    """The command line's ``KEY=VALUE`` overrides applied to the file."""

    def line_of(self, dotted: str) -> int | None:
        """The spec line of a dotted field (or of its closest ancestor in the file)."""
        return nearest_line(self.lines, tuple(dotted.split(".")))

    @property
    def base(self) -> JobSpec:
        return self.runs[0].spec

    def with_executor(self, executor: str) -> Sweep:
        """The same sweep with every run's executor replaced (the command line's ``--executor``)."""
        runs = [Run(r.index, r.spec.model_copy(update={"executor": executor}), r.overrides) for r in self.runs]
        return Sweep(self.file, self.raw, runs, self.lines, self.search, self.overrides)


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = target
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, dict):
            raise KeyError(dotted)
        node = child
    node[keys[-1]] = value


def _check_dotted(dotted: str) -> str | None:
    """Return an error message if ``dotted`` does not name a field of :class:`JobSpec`."""
    model: Any = JobSpec
    keys = dotted.split(".")
    for i, key in enumerate(keys):
        fields = model.model_fields
        if key not in fields:
            prefix = ".".join(keys[:i]) or "the spec"
            return f"unknown field {key!r} of {prefix}; valid: {', '.join(fields)}"
        annotation = fields[key].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif i < len(keys) - 1 and not str(annotation).startswith("dict"):
            return f"{'.'.join(keys[: i + 1])} has no sub-fields"
        else:
            return None  # a leaf, or a free-form mapping (model.kwargs.*, resources.sbatch_extra.*)
    return "names a whole section; sweep one of its fields"


def _combinations(sweep: SweepSpec) -> list[dict[str, Any]]:
    grid_keys = list(sweep.grid)
    zip_len = len(next(iter(sweep.zip.values()))) if sweep.zip else 1
    combos = []
    for values in itertools.product(*(sweep.grid[k] for k in grid_keys)):
        for j in range(zip_len):
            combo = dict(zip(grid_keys, values))
            combo.update({k: v[j] for k, v in sweep.zip.items()})
            combos.append(combo)
    return combos


def draw(space: dict[str, dict[str, list[Any]]], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` configurations drawn from ``space`` (``sweep.search.space``), the same ones for the same seed;
    floats are kept to 4 significant digits (readable labels, exact in the YAML of a rerun)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        config: dict[str, Any] = {}
        for key in sorted(space):
            (kind, args), = space[key].items()
            if kind == "choice":
                config[key] = args[int(rng.integers(len(args)))]
            elif kind == "int":
                config[key] = int(rng.integers(args[0], args[1] + 1))
            elif kind == "uniform":
                config[key] = float(f"{rng.uniform(args[0], args[1]):.4g}")
            else:
                config[key] = float(f"{np.exp(rng.uniform(np.log(args[0]), np.log(args[1]))):.4g}")
        out.append(config)
    return out


def expand(raw: dict[str, Any], lines: dict[Loc, int] | None = None, file: str = "<spec>") -> Sweep:
    """Expand a parsed spec mapping into runs; every run is validated, the first error raises :class:`SpecError`."""
    lines = lines or {}
    raw = dict(raw)
    sweep_raw = raw.pop("sweep", None) or {}
    try:
        sweep = SweepSpec.model_validate(sweep_raw)
    except ValidationError as exc:
        raise _to_spec_error(exc, file, lines, prefix=("sweep",)) from None
    search = sweep.search
    blocks = [("grid", sweep.grid), ("zip", sweep.zip), ("search.space", search.space if search else {})]
    for block, keys in blocks:
        for key in keys:
            problem = _check_dotted(key)
            if search is not None and key == "optim.epochs":
                problem = "cannot vary in a search: search.max_epochs sets it (the schedule is defined over it)"
            if block == "search.space" and key in {*sweep.grid, *sweep.zip}:
                problem = "is drawn from search.space and listed in grid/zip: give it in one place"
            if key.split(".")[0] in SWEEP_FIXED:
                problem = ("cannot vary within a sweep: its tasks share one array job (resources, executor), "
                           "one sweep folder and one MLflow experiment")
            if problem:
                raise SpecError(problem, file=file, line=nearest_line(lines, ("sweep", *block.split("."), key)),
                                field=f"sweep.{block}.{key}")

    combos = _combinations(sweep)
    if search is not None and search.n_trials:
        combos = [{**combo, **drawn} for drawn in draw(search.space, search.n_trials, search.seed) for combo in combos]
    runs: list[Run] = []
    objectives_ok: set[tuple[str, str, str]] = set()
    for index, combo in enumerate(combos):
        run_raw = copy.deepcopy(raw)
        if search is not None and search.max_epochs is not None:  # the schedule of every run is over max_epochs
            _set_dotted(run_raw, "optim.epochs", search.max_epochs)
        for key, value in combo.items():
            try:
                _set_dotted(run_raw, key, value)
            except KeyError:
                raise SpecError("cannot set a sub-field of a non-mapping value", file=file,
                                line=nearest_line(lines, ("sweep",)), field=key) from None
        try:
            spec = JobSpec.model_validate(run_raw)
        except ValidationError as exc:
            raise _to_spec_error(exc, file, lines, combo=combo, sweep=sweep, run=index) from None
        problem = _resources_problem(spec)
        if problem is not None:
            raise _located(problem[1], problem[0], file, lines, combo=combo, sweep=sweep, run=index)
        key = (spec.data.task, spec.checkpoint.best_metric, spec.model.name)
        if key not in objectives_ok:
            problem = _objective_problem(spec)
            if problem is not None:
                field, message = problem
                raise _located(message, field, file, lines, combo=combo, sweep=sweep, run=index)
            objectives_ok.add(key)
        runs.append(Run(index=index, spec=spec, overrides=combo))
    if search is not None:
        _check_search(search, runs, file, lines)
    return Sweep(file=file, raw={**raw, "sweep": sweep_raw} if sweep_raw else raw, runs=runs, lines=lines,
                 search=search)


def _resources_problem(spec: JobSpec) -> tuple[str, str] | None:
    """(field, message) when the run's resources contradict each other or its executor."""
    from hpcvit.scheduler.adapter import SCHEDULERS, for_executor

    res = spec.resources
    if res.nodes > 1 and not for_executor(spec.executor).multi_node:
        able = ", ".join(k for k, s in SCHEDULERS.items() if s.multi_node)
        return "resources.nodes", (f"{res.nodes} nodes need executor: {able} (the {for_executor(spec.executor).title} "
                                   "runs a task on this machine only)")
    if res.signal_delay_s >= res.time_min * 60:
        return "resources.signal_delay_s", (f"{res.signal_delay_s} s is not shorter than time_min ({res.time_min} "
                                            "min): the warning to checkpoint would come before the task starts")
    return None


def _objective_problem(spec: JobSpec) -> tuple[str, str] | None:
    """(field, message) when the run's task is not a registered objective or its ``checkpoint.best_metric`` is
    not one of the task's metrics."""
    from hpcvit.objectives import check_metric, get_objective

    try:
        get_objective(spec.data.task)
    except ValueError as exc:
        return "data.task", str(exc)
    problem = check_metric(spec.data.task, spec.checkpoint.best_metric, "")
    if problem:
        return "checkpoint.best_metric", problem
    from hpcvit.models import check_inputs

    try:
        check_inputs(spec.model.name, get_objective(spec.data.task).model_inputs)
    except ValueError as exc:
        return "model.name", f"{exc} (data.task: {spec.data.task})"
    return None


def _check_search(search: SearchSpec, runs: list[Run], file: str, lines: dict[Loc, int]) -> None:
    """What the search needs of its runs: a metric their task has, and a first rung shorter than their epochs."""
    from hpcvit.objectives import check_metric

    base = runs[0].spec
    for task in sorted({r.spec.data.task for r in runs}):
        problem = check_metric(task, search.metric, "")
        if problem:
            raise SpecError(problem, file=file, line=nearest_line(lines, ("sweep", "search", "metric")),
                            field="sweep.search.metric")
    if search.min_epochs > base.optim.epochs:
        raise SpecError(f"min_epochs {search.min_epochs} exceeds the {base.optim.epochs} epochs of the runs "
                        "(set search.max_epochs)", file=file,
                        line=nearest_line(lines, ("sweep", "search", "min_epochs")), field="sweep.search.min_epochs")


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Load, expand and validate a spec file, with the command line's ``KEY=VALUE`` ``overrides`` applied."""
    raw, lines = load_yaml(path)
    if overrides:
        from hpcvit.overrides import apply

        raw, lines = apply(raw, lines, overrides, str(path))
        return dataclasses.replace(expand(raw, lines, file=str(path)), overrides=tuple(overrides))
    return expand(raw, lines, file=str(path))


def _to_spec_error(exc: ValidationError, file: str, lines: dict[Loc, int], *, prefix: Loc = (),
                   combo: dict[str, Any] | None = None, sweep: SweepSpec | None = None,
                   run: int | None = None) -> SpecError:
    err = exc.errors(include_url=False)[0]
    loc: Loc = prefix + tuple(err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = _unknown_field(SweepSpec if prefix == ("sweep",) else JobSpec, tuple(err["loc"]))
    named = re.match(r"([A-Za-z_]\w*(?:\.\w+)+): (.+)", message)
    if named and tuple(named.group(1).split("."))[:len(loc)] == tuple(str(p) for p in loc):
        # a section's check that names the field inside it: point at that field
        loc, message = tuple(named.group(1).split(".")), named.group(2)
    return _located(message, ".".join(str(p) for p in loc), file, lines, combo=combo, sweep=sweep, run=run, loc=loc)


def _unknown_field(model: Any, loc: Loc) -> str:
    """``unknown field 'epochz'; did you mean 'epochs'?`` and the fields its section has."""
    import difflib
    import typing

    for key in loc[:-1]:
        field_info = getattr(model, "model_fields", {}).get(key)
        kinds = [field_info.annotation, *typing.get_args(field_info.annotation)] if field_info else []
        model = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
        if model is None:
            return f"unknown field {loc[-1]!r}"
    names = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown field {loc[-1]!r}{hint} ({'.'.join(map(str, loc[:-1])) or 'the spec'} has: {', '.join(names)})"


def _located(message: str, dotted: str, file: str, lines: dict[Loc, int], *, combo: dict[str, Any] | None = None,
             sweep: SweepSpec | None = None, run: int | None = None, loc: Loc | None = None) -> SpecError:
    """A :class:`SpecError` about field ``dotted`` (at ``loc`` in the file) of run ``run``, at the line that gave
    the field its value."""
    line = nearest_line(lines, loc if loc is not None else tuple(dotted.split(".")) if dotted else ())
    if combo and sweep:
        # An error inside an expanded run points at the sweep value that produced it, when one did.
        swept = False
        for key in combo:
            if dotted == key or dotted.startswith(key + "."):
                values = sweep.grid.get(key) or sweep.zip.get(key) or []
                position = values.index(combo[key]) if combo[key] in values else 0
                line = nearest_line(lines, ("sweep", "grid" if key in sweep.grid else "zip", key, position))
                swept = True
                break
        if swept or line is None or line >= 0:  # an override's own error is every run's: no run to name
            message = f"{message} (run {run}: {', '.join(f'{k}={v}' for k, v in combo.items())})"
    return SpecError(message, file=file, line=line, field=dotted or None)


def check_script_path(path: Path, sweep: Sweep) -> None:
    """``submit --dry-run -o PATH``: refuse an output file that is an input of the sweep, a folder, or in a folder that does not exist."""
    inputs = [Path(sweep.file), *{Path(p) for r in sweep.runs for p in r.spec.data.paths}]
    for source in inputs:
        if path.exists() and source.exists() and path.samefile(source) or path.resolve() == source.resolve():
            raise UsageError(f"-o {path}: is an input of the sweep ({source}); write the script elsewhere")
    if path.is_dir():
        raise UsageError(f"-o {path}: is a folder; name a file")
    if not path.resolve().parent.is_dir():
        raise UsageError(f"-o {path}: folder {path.parent} does not exist")
