"""The sweep's comparison as MLflow's own runs table, opened by a URL: a shared view state.

MLflow's experiment page loads a view (sort order, filter, chosen columns, expanded parent runs) from the
experiment tag ``mlflow.sharedViewState.<key>`` when its URL carries ``viewStateShareKey=<key>``: the URL that
``hpcvit ui`` prints opens, in any browser profile, on the sweep's runs sorted by the ranking metric, with its
validation and test values and the swept parameters as columns and the sweep's parent run expanded.
"""

from __future__ import annotations

import json
import re
from typing import Any

SHARED_VIEW_TAG = "mlflow.sharedViewState."


def view_key(sweep_id: str) -> str:
    return re.sub(r"[^\w\-]", "-", sweep_id)


def view_state(sweep: Any) -> dict[str, Any]:
    """The runs table of ``sweep``: its runs only, sorted by the ranking metric (test when the sweep has a test
    split, else the best validation value), that metric of both splits and the swept fields as columns."""
    from hpcvit.objectives import get_objective, metric_mode
    from hpcvit.results.rows import swept_fields
    from hpcvit.tracking import names

    specs = sweep.run_specs()
    objective = get_objective(specs[0].data.task)
    metric = objective.primary_metric(specs[0].checkpoint.best_metric)[0]
    base = metric.removeprefix("val_")
    has_test = any(s.data.test_fraction > 0 for s in specs)
    ranked = f"test_{base}" if has_test else f"best_{metric}"
    swept = swept_fields(sweep)
    if len({s.model.name for s in specs}) > 1:
        swept = ["model.name", *swept]
    columns = [f"metrics.`{ranked}`", *([f"metrics.`best_{metric}`"] if has_test else []),
               *(f"params.`{k}`" for k in swept)]
    m = sweep.manifest
    return {
        "searchFilter": f"tags.`{names.SWEEP_ID_TAG}` = '{sweep.sweep_id}'",
        "orderByKey": f"metrics.`{ranked}`", "orderByAsc": metric_mode(base) == "min",
        "selectedColumns": columns, "runsExpanded": {m["parent_run_id"]: True}}


def share(client: Any, sweep: Any) -> str:
    """Set the sweep's view on its experiment; the key that opens it."""
    key = view_key(sweep.sweep_id)
    client.set_experiment_tag(sweep.manifest["experiment_id"], SHARED_VIEW_TAG + key,
                              json.dumps(view_state(sweep), separators=(",", ":")))
    return key


def view_url(base_url: str, experiment_id: str, key: str) -> str:
    """The runs page of ``experiment_id`` in the shared view ``key``."""
    return f"{base_url}/#/experiments/{experiment_id}/runs?viewStateShareKey={key}"
