"""A trained run in use: predict on new files, evaluate on labelled ones, export for use without hpcvit.

A run is named ``SWEEP/TASK`` (sweep id or folder, task index) or by its MLflow run id (:mod:`.runs`); its
weights, preprocessing statistics and spec come from its own folder, read without pickle. Nothing here needs
a GPU or the cluster: these commands run in a new shell on a login node.
"""
