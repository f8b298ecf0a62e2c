"""The task's model as training starts it: built by its objective, or from earlier weights (``model.init_from``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def build_model(objective: Any, data: Any, *, fresh: bool, log: Callable[[str], None]) -> tuple[Any, str | None]:
    """(model, what ``model.init_from`` did not take or None). A model that cannot be built for the data is a
    one-line error naming ``model.kwargs``; a resumed task (``fresh`` False) takes its weights from its own
    checkpoint later, not from ``model.init_from``."""
    spec = objective.spec
    try:
        model = objective.build_model()
    except (ValueError, RuntimeError, TypeError, ZeroDivisionError, AssertionError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"model.kwargs: model {spec.model.name} with {spec.model.kwargs or 'no kwargs'} cannot be "
                         f"built for {data.info.get('shape', 'this data')} inputs ({first})") from None
    if not fresh or not spec.model.init_from:
        return model, None
    from hpcvit.models.init import start_from

    notes = start_from(model, spec.model.init_from)
    log(f"model.init_from: weights from {spec.model.init_from}; {notes}")
    return model, notes
