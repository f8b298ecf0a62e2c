"""What every section of the spec shares: strict, frozen pydantic models; finite numbers; seed and name limits."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SEED_LIMIT = 2**32
"""Seeds are in ``[0, 2**32)``: what numpy, torch and Python's generators all take as they are."""


def finite(value: Any, where: str) -> None:
    """Refuse NaN and infinities anywhere inside a free-form value (model kwargs, sweep values)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {value} is not a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            finite(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            finite(v, f"{where}[{i}]")


class Section(BaseModel):
    """A section of the spec: unknown keys refused, no coercion, immutable, finite numbers only."""

    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True, frozen=True,
                              allow_inf_nan=False)
