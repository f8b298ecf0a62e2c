"""Starting a model from earlier weights (``model.init_from``): which file a reference names, and loading its
tensors into a freshly built model without pickle, shape by shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors")


class InitError(ValueError):
    """Weights that cannot start this model (one line naming the file)."""


def read_state(path: Path) -> dict[str, Any]:
    """The model tensors of ``path``: a safetensors file, a bare state dict, or a checkpoint (its EMA's weights
    where it kept one, else its model's)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InitError(f"{path}: not a safetensors file ({str(exc).splitlines()[0][:200]})") from None
    from hpcvit.checkpoint import load_weights

    state = load_weights(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state.get("ema") or state["model"]
    if not isinstance(state, dict) or not state or not all(hasattr(v, "shape") for v in state.values()):
        raise InitError(f"{path}: holds no model weights (a state dict of tensors, or a checkpoint with 'model')")
    return state


def load_into(model: Any, state: dict[str, Any], source: str) -> list[str]:
    """Copy every tensor of ``state`` that the model has with the same shape; the rest keep their fresh values.
    Returns what was not taken (one note per kind); an :class:`InitError` when nothing fits."""
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    reshaped = [f"{k} ({'x'.join(map(str, state[k].shape))} vs {'x'.join(map(str, own[k].shape))})"
                for k in state if k in own and k not in fitting]
    absent = [k for k in own if k not in state]
    unused = [k for k in state if k not in own]
    if not fitting:
        raise InitError(f"{source}: none of its {len(state)} tensors fits this model (first: {next(iter(state))}); "
                        "is it a run of the same model?")
    model.load_state_dict(fitting, strict=False)
    notes = []
    if reshaped:
        notes.append(f"re-initialised (another shape): {', '.join(reshaped[:6])}{' ...' if len(reshaped) > 6 else ''}")
    if absent:
        notes.append(f"not in the weights, fresh: {', '.join(absent[:6])}{' ...' if len(absent) > 6 else ''}")
    if unused:
        notes.append(f"unused: {', '.join(unused[:6])}{' ...' if len(unused) > 6 else ''}")
    return notes


def start_from(model: Any, source: str) -> str:
    """Load ``model.init_from``'s weights file into ``model``; what was not taken, in one line."""
    return "; ".join(load_into(model, read_state(Path(source)), source)) or "every tensor taken"
