"""What validation knows beyond the spec's types: model kwargs, ``model.init_from`` and the data files, each
problem a :class:`SpecError` pointing at the spec's line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from hpcvit.sweep import Sweep
from hpcvit.yamlio import SpecError

if TYPE_CHECKING:
    from hpcvit.config import DataSpec


def check_sweep(sweep: Sweep, data: bool = True) -> list[str]:
    """What validation knows beyond the spec's types, as :class:`SpecError` s pointing at the spec's line:
    model kwargs against the builders' signatures (imports torch only when kwargs are set) and, with ``data``,
    each data set's files against the spec (metadata only: files, image column, channels, target and cut
    columns). Returns one line per data set saying what was checked."""
    from hpcvit.models import check_model_kwargs

    seen: set[str] = set()
    for run in sweep.runs:
        key = json.dumps([run.spec.model.name, run.spec.model.kwargs], sort_keys=True, default=str)
        if run.spec.model.kwargs and key not in seen:
            seen.add(key)
            try:
                check_model_kwargs(run.spec.model.name, run.spec.model.kwargs)
            except ValueError as exc:
                raise SpecError(str(exc), file=sweep.file, line=sweep.line_of("model.kwargs"),
                                field="model.kwargs") from None
    init_files(sweep)
    return check_data(sweep) if data else []


def init_files(sweep: Sweep) -> dict[str, str]:
    """Each ``model.init_from`` of the sweep -> the absolute weights file it names; a :class:`SpecError` at its
    line when it names none."""
    from hpcvit.inference.runs import RunNotFound, weights_file

    found: dict[str, str] = {}
    for run in sweep.runs:
        ref = run.spec.model.init_from
        if ref is None or ref in found:
            continue
        try:
            found[ref] = str(weights_file(ref, Path(run.spec.output_dir)))
        except (RunNotFound, FileNotFoundError) as exc:
            raise SpecError(str(exc), file=sweep.file, line=sweep.line_of("model.init_from"),
                            field="model.init_from") from None
    return found


def check_data(sweep: Sweep) -> list[str]:
    """Each data set of the sweep checked by its objective without reading it whole; one line per data set."""
    from hpcvit import data
    from hpcvit.objectives import get_objective

    checked = []
    for spec in {r.spec.data.model_dump_json(): r.spec.data for r in sweep.runs}.values():
        problem = _data_folders_problem(spec)
        if problem is not None:
            raise SpecError(problem[1], file=sweep.file, line=sweep.line_of(problem[0]), field=problem[0])
        try:
            checked.append(get_objective(spec.task).check_data(spec))
        except data.DataError as exc:
            field = exc.field or "data.paths"
            raise SpecError(str(exc), file=sweep.file, line=sweep.line_of(field), field=field) from None
    return checked


def _data_folders_problem(spec: DataSpec) -> tuple[str, str] | None:
    """(field, message) when the cache folder is a file or one data file is listed twice under two names."""
    import os

    if spec.cache_dir is not None and os.path.exists(spec.cache_dir) and not os.path.isdir(spec.cache_dir):
        return "data.cache_dir", f"{spec.cache_dir} is a file, not a folder: name a folder for the cache"
    seen: dict[tuple[int, int], str] = {}
    for path in spec.paths:
        try:
            st = os.stat(path)
        except OSError:
            continue  # the objective's check names missing files
        if (st.st_dev, st.st_ino) in seen:
            return "data.paths", (f"{path} and {seen[st.st_dev, st.st_ino]} are the same file: its samples would "
                                  "be in training and validation alike")
        seen[st.st_dev, st.st_ino] = path
    return None


def tracking_error(sweep: Sweep, uri: str, exc: BaseException) -> SpecError:
    """The one line for a tracking store that cannot be used, at the spec's ``tracking.uri``."""
    from hpcvit.tracking.outage import outage_line, refused_access, short_reason

    why = (outage_line(exc) if refused_access(exc) else None) or (
        f"{short_reason(exc)}; start the server or point tracking.uri elsewhere")
    return SpecError(f"the tracking store {uri} cannot be used: {why}; nothing was submitted", file=sweep.file,
                     line=sweep.line_of("tracking.uri"), field="tracking.uri")


def check_tracking(sweep: Sweep) -> None:
    """A tracking server the sweep names answers and takes these credentials (a dry run checks it as a submission
    would; a SQLite file is made at submission)."""
    from hpcvit.tracking import mlflow_client, resolve_uri

    uri = resolve_uri(sweep.base.tracking.uri, Path(sweep.base.output_dir))
    if not uri.startswith(("http://", "https://")):
        return
    try:
        mlflow_client(uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - one line for whatever the server answered
        raise tracking_error(sweep, uri, exc) from None
