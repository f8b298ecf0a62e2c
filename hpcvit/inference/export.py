"""A trained run exported for use without its run folder: the weights as TorchScript, ONNX or safetensors, and a
model card (``model.json``) that says everything predicting needs (model and kwargs, input shape and channels,
preprocessing with its statistics, output meaning) and where the model came from (metrics, data fingerprint,
versions, commit). The export's outputs are checked against the trained model on a batch before it is kept."""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

EXPORT_FORMATS = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx", "safetensors": "model.safetensors"}
CARD = "model.json"
CARD_FORMAT = "hpcvit-export/1"
ONNX_TOLERANCE = 1e-5
"""Largest absolute (and relative) difference of an ONNX Runtime output from the trained model's."""


class ExportError(ValueError):
    """An export that could not be made or did not reproduce the trained model (nothing is written)."""


def _example(objective: Any, shape: list[int], n_scalars: int, batch: int = 8) -> list[Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(batch, *shape, generator=g)]
    if n_scalars:
        inputs.append(torch.randn(batch, n_scalars, generator=g))
    return inputs


def card(run: Any, fmt: str, shape: list[int]) -> dict[str, Any]:
    """The model card of ``run`` exported as ``fmt``."""
    from hpcvit import provenance

    spec, task = run.spec, run.task
    result = task.result() or {}
    objective = run.objective()
    return {
        "format": CARD_FORMAT, "weights": EXPORT_FORMATS[fmt], "weights_format": fmt,
        "run": run.ref, "mlflow_run_id": task.run_id(), "checkpoint": run.which, "epoch": run.epoch,
        "task": spec.data.task, "model": {"name": spec.model.name, "kwargs": spec.model.kwargs},
        "input": {"shape": shape, "batch_axis": 0, "dtype": "float32", "format": spec.data.format,
                  "input_key": spec.data.input_key, "channels": spec.data.channels,
                  "scalar_inputs": list(spec.data.scalar_inputs), "cuts": dict(spec.data.cuts),
                  "nonfinite": spec.data.nonfinite},
        "preprocessing": spec.data.preprocessing.model_dump(mode="json"),
        "state": {k: v for k, v in run.state.items() if k in objective.state_keys},
        "outputs": {"raw": "one value per image", "columns": list(objective.prediction_columns(np.zeros(1)))},
        "metrics": {"best_metric": result.get("metric"), "best_value": result.get("best_metric"),
                    "best_epoch": result.get("best_epoch"), **(result.get("final") or {})},
        "data": {"fingerprint": _fingerprint(task), "target_key": spec.data.target_key},
        "environment": provenance.environment(),
        "spec": spec.model_dump(mode="json"),
    }


def _fingerprint(task: Any) -> str | None:
    """The data fingerprint the run recorded (its MLflow params), when the store is reachable."""
    try:
        from hpcvit.tracking import mlflow_client

        run_id = task.run_id()
        if run_id is None:
            return None
        client = mlflow_client(task.sweep.manifest["tracking_uri"])
        return client.get_run(run_id).data.params.get("data.fingerprint")
    except Exception:  # noqa: BLE001 - the card says None rather than failing an export on a down server
        return None


def _check(expected: Any, got: Any, fmt: str) -> None:
    import torch

    got = torch.as_tensor(np.asarray(got)) if not isinstance(got, torch.Tensor) else got
    if fmt == "onnx":
        diff = float((got.float() - expected.float()).abs().max())
        scale = float(expected.float().abs().max()) or 1.0
        if diff > ONNX_TOLERANCE * max(1.0, scale):
            raise ExportError(f"onnx: outputs differ from the trained model's by up to {diff:.3g} (tolerance "
                              f"{ONNX_TOLERANCE:g}); nothing written")
    elif not torch.equal(got, expected):
        diff = float((got.float() - expected.float()).abs().max())
        raise ExportError(f"{fmt}: outputs differ from the trained model's by up to {diff:.3g}; nothing written")


def export(run: Any, fmt: str, out: Path) -> Path:
    """Write ``run`` as ``fmt`` with its card into folder ``out`` (new, or empty); returns ``out``."""
    import torch

    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"--format {fmt}: one of {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"-o {out}: {'is a file' if not out.is_dir() else 'folder is not empty'}; name a new folder")
    if not out.resolve().parent.is_dir():
        raise ExportError(f"-o {out}: folder {out.parent} does not exist")
    objective = run.objective()
    if objective.model_inputs != "image":
        raise ExportError(f"{run.ref}: exporting a {objective.name} run is not available")
    shape = run.state.get("input_shape") or _shape_of_training_data(run)
    n_scalars = len(run.spec.data.scalar_inputs)
    model = objective.network(shape[0], shape[1], n_scalars)
    model.load_state_dict(run.weights)
    model.eval()
    inputs = _example(objective, shape, n_scalars)
    with torch.no_grad():
        expected = model(*inputs)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.resolve().parent))
    try:
        target = tmp / EXPORT_FORMATS[fmt]
        got = _write(fmt, model, inputs, target)
        _check(expected, got, fmt)
        (tmp / CARD).write_text(json.dumps(card(run, fmt, shape), indent=1, default=str) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _shape_of_training_data(run: Any) -> list[int]:
    """A run saved before checkpoints carried its input shape: the shape of its training files."""
    from hpcvit.data.build import resolve_paths
    from hpcvit.data.formats import open_store

    spec = run.spec.data
    paths = resolve_paths(spec, run.task.sweep.root)
    if not all(p.exists() for p in paths):
        raise ExportError(f"{run.ref}: its checkpoint does not say its input shape and its data "
                          f"({paths[0]}) is gone; retrain or restore the data")
    store = open_store(spec, paths)
    try:
        return [int(v) for v in store.shape]
    finally:
        store.close()


def _write(fmt: str, model: Any, inputs: list[Any], target: Path) -> Any:
    """Write the model in ``fmt``; return its outputs on ``inputs`` as read back from the written file."""
    import torch

    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still loadable
            traced = torch.jit.trace(model, tuple(inputs), check_trace=False)
            traced.save(str(target))
            loaded = torch.jit.load(str(target), map_location="cpu")
            return loaded(*inputs)
    if fmt == "safetensors":
        from safetensors.torch import load_file, save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(target))
        return _reloaded(model, load_file(str(target)), inputs)
    return _onnx(model, inputs, target)


def _reloaded(model: Any, weights: dict[str, Any], inputs: list[Any]) -> Any:
    import copy

    import torch

    twin = copy.deepcopy(model)
    for p in twin.state_dict().values():
        p.zero_()
    twin.load_state_dict(weights)
    with torch.no_grad():
        return twin(*inputs)


def _onnx(model: Any, inputs: list[Any], target: Path) -> Any:
    import torch

    try:
        import onnxruntime
    except ImportError:
        raise ExportError("onnx: needs onnx and onnxruntime to write and check the export "
                          "(pip install 'hpcvit[export]')") from None
    names = ["image", "scalars"][:len(inputs)]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX form
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, tuple(inputs), str(target), input_names=names, output_names=["output"],
                              dynamic_axes={**{n: {0: "batch"} for n in names}, "output": {0: "batch"}},
                              dynamo=False, opset_version=17)
    except Exception as exc:  # noqa: BLE001 - an operator without an ONNX form: its first line, not the graph
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"onnx: {first[:300]}; nothing written (try --format torchscript or safetensors)") from None
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    return session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})[0]


@dataclass
class ExportedRun:
    """An export read back: what :func:`hpcvit.inference.predict.predict` needs, from the folder alone."""

    folder: Path
    card: dict[str, Any]
    spec: Any
    state: dict[str, Any]
    weights: dict[str, Any] | None = None

    @property
    def ref(self) -> str:
        return str(self.folder)

    def objective(self) -> Any:
        from hpcvit.objectives import get_objective

        objective = get_objective(self.spec.data.task)(self.spec, self.folder)
        objective.restore(self.state)
        return objective

    def forward(self) -> Any:
        """A function of the model's inputs (tensors) -> outputs (tensor), from the exported file."""
        import torch

        path = self.folder / self.card["weights"]
        fmt = self.card["weights_format"]
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(path), map_location="cpu")
            return lambda *inputs: model(*inputs)
        if fmt == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            names = [i.name for i in session.get_inputs()]
            return lambda *inputs: torch.from_numpy(session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})[0])
        return None  # safetensors: the weights, built into the registered model


def read_export(folder: Path) -> ExportedRun:
    """An export folder's card and weights; a one-line error when it is not one."""
    from hpcvit.config import JobSpec

    folder = Path(folder)
    path = folder / CARD
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{folder}: not an export (no {CARD})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: not a model card ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
        raise ExportError(f"{path}: not a model card of format {CARD_FORMAT}")
    try:
        spec = JobSpec.model_validate(data["spec"])
    except (KeyError, ValueError) as exc:
        raise ExportError(f"{path}: its spec is not valid ({str(exc).splitlines()[0]})") from None
    state = dict(data.get("state") or {})
    state.setdefault("input_shape", data.get("input", {}).get("shape"))
    run = ExportedRun(folder, data, spec, state)
    if data.get("weights_format") == "safetensors":
        from safetensors.torch import load_file

        run.weights = load_file(str(folder / data["weights"]))
    return run
