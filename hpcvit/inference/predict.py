"""A trained image model on new files: the run's own channel selection, cuts, preprocessing statistics and
scalar-input scales, batched, on the CPU or a GPU; each row keeps its file, its index in that file and its
scalar columns beside the prediction."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcvit.data.store import DataError

PREDICTION_FORMATS = (".parquet", ".csv")


@dataclass
class Predictions:
    """One row per selected sample of the files."""

    columns: dict[str, np.ndarray]
    """``file``, ``row`` (its index in that file), the files' scalar columns, then the objective's outputs."""
    outputs: list[str]
    """The names of the prediction columns (``score``, ``logit``; ``prediction``)."""
    raw: np.ndarray
    """The model's raw outputs (what training's evaluation scores)."""


def _data_spec(spec: Any, files: list[Path]) -> Any:
    from hpcvit.data.formats import detect_format

    formats = {str(f): detect_format(f) for f in files}
    if len(set(formats.values())) > 1:
        raise DataError(f"--data: mixes {' and '.join(sorted(set(formats.values())))} files; pass one format at a "
                        "time")
    return spec.model_copy(update={"paths": [str(f) for f in files], "format": next(iter(formats.values())),
                                   "cache_dir": None, "max_samples": None})


def open_inputs(run_spec: Any, files: list[Path], input_shape: list[int] | None) -> tuple[Any, Any, np.ndarray,
                                                                                          dict[str, np.ndarray]]:
    """(data spec, store, selected rows, every scalar column of those rows) of ``files`` read as the run read
    its data; a :class:`DataError` when the images are not the shape the model was trained on."""
    from hpcvit.data.formats import open_store
    from hpcvit.data.selection import missing_columns, select

    for f in files:
        if not f.is_file():
            raise DataError(f"{f}: {'is a folder' if f.is_dir() else 'file not found'}", field="--data")
    spec = _data_spec(run_spec, files)
    store = open_store(spec, files)
    if input_shape is not None and list(store.shape) != list(input_shape):
        shape, trained = "x".join(map(str, store.shape)), "x".join(map(str, input_shape))
        picked = f" (after the run's data.channels {spec.channels})" if spec.channels is not None else ""
        raise DataError(f"{files[0]}: images are {shape}{picked}; the run was trained on {trained}", field="--data")
    problem = missing_columns(store, list(spec.scalar_inputs), "data.scalar_inputs")
    if problem is not None:
        raise problem
    rows, columns = select(store, spec, store.scalar_columns())
    return spec, store, rows, columns


def batches(store: Any, spec: Any, rows: np.ndarray, stats: Any, batch_size: int) -> Iterator[tuple[np.ndarray,
                                                                                                      np.ndarray]]:
    """(positions in ``rows``, preprocessed images) of at most ``batch_size`` rows, as training preprocesses."""
    from hpcvit.data.preprocess import apply, check_finite

    for lo in range(0, len(rows), batch_size):
        part = rows[lo:lo + batch_size]
        x = store.read(part)
        try:
            check_finite(x, part, store.where, spec.nonfinite)
        except DataError as exc:  # the training advice does not apply here: say what the run does instead
            raise DataError(str(exc).split("; data.nonfinite")[0] + "; the run was trained with data.nonfinite: "
                            "error, so it predicts no image holding them", field="--data") from None
        yield np.arange(lo, lo + len(part)), apply(x, spec.preprocessing, stats)


def predict(run: Any, files: list[Path], batch_size: int = 256, device: str = "cpu",
            forward: Any = None) -> Predictions:
    """The run's predictions on ``files`` (``run``: a :class:`~hpcvit.inference.runs.TrainedRun`, or an export's
    loaded card with ``forward``)."""
    import torch

    objective = run.objective()
    if objective.model_inputs != "image":
        raise DataError(f"{run.ref}: predicting with a {objective.name} run is not available", field="--data")
    shape = run.state.get("input_shape")
    spec, store, rows, columns = open_inputs(run.spec.data, files, shape)
    if forward is None:
        model = objective.network(int(store.shape[0]), int(store.shape[1]), len(spec.scalar_inputs))
        model.load_state_dict(run.weights)
        model.eval().to(device)

        def forward(*inputs: torch.Tensor) -> torch.Tensor:
            return model(*(t.to(device) for t in inputs))
    scalars = None
    if spec.scalar_inputs:
        values = np.stack([columns[c] for c in spec.scalar_inputs], axis=1)
        scalars = objective.scalar_scale.apply(values).astype(np.float32)
    out = np.empty(len(rows), np.float32)
    with torch.inference_mode():
        for pos, x in batches(store, spec, rows, objective.stats, batch_size):
            inputs = [torch.from_numpy(x)]
            if scalars is not None:
                inputs.append(torch.from_numpy(scalars[pos]))
            out[pos] = forward(*inputs).float().view(-1).cpu().numpy()
    file_of = store.file_index(rows)
    paths = np.array([str(p) for p in store.paths], dtype=object)
    predicted = objective.prediction_columns(out)
    table = {"file": paths[file_of], "row": rows - store.file_start[file_of], **columns, **predicted}
    store.close()
    return Predictions(table, list(predicted), out)


def write_table(columns: dict[str, np.ndarray], path: Path) -> Path:
    """``columns`` as Parquet or CSV (by ``path``'s suffix), written whole or not at all."""
    import pyarrow as pa

    from hpcvit import fsio

    table = pa.table({k: pa.array(v.tolist() if v.dtype == object else v) for k, v in columns.items()})
    with fsio.atomic_path(path) as tmp:
        if path.suffix.lower() == ".csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, str(tmp))
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, str(tmp))
    return path
