"""The job spec: one pydantic model per concern, a docstring under every field.

A spec file holds a :class:`JobSpec` (:mod:`.job`, its data in :mod:`.data`) plus an optional ``sweep:`` block
(:class:`SweepSpec`, :mod:`.sweep`) that :mod:`hpcvit.sweep` expands into runs, each of which is validated as a
:class:`JobSpec` of its own. What a field may name beyond its type (a registered objective, one of its metrics,
a model's keyword arguments) is checked when the sweep is expanded.
"""

from hpcvit.config.base import NAME_PATTERN, SEED_LIMIT, Section
from hpcvit.config.data import (
    DATA_FIELD_ROLES,
    HIT_FEATURES,
    DataSpec,
    HitsSpec,
    PreprocessSpec,
    SyntheticSpec,
    data_fields,
)
from hpcvit.config.job import (
    SBATCH_EXTRA_ALLOWED,
    CheckpointSpec,
    JobSpec,
    ModelSpec,
    OptimSpec,
    ResourcesSpec,
    TrackingSpec,
)
from hpcvit.config.sweep import MAX_RUNS, Distribution, SearchSpec, SweepSpec

__all__ = ["DATA_FIELD_ROLES", "HIT_FEATURES", "HitsSpec", "MAX_RUNS", "NAME_PATTERN", "SBATCH_EXTRA_ALLOWED", "SEED_LIMIT", "CheckpointSpec",
           "DataSpec", "Distribution", "JobSpec", "ModelSpec", "OptimSpec", "PreprocessSpec", "ResourcesSpec",
           "SearchSpec", "Section", "SweepSpec", "SyntheticSpec", "TrackingSpec", "data_fields"]
