"""Hit clustering (seed 003): per-event calorimeter hits and the particles that made them.

``layout`` (awkward's buffers in HDF5), ``store`` and ``parquet`` (the readers), ``cache`` (the ragged,
memory-mapped cache), ``data`` (events, scaling, padded batches by length), ``detector``, ``simulate`` and
``generate`` (events made here), ``models``, ``matching`` (losses free of the particles' order), ``metrics``,
``topo`` (the topological baseline), ``evaluation`` (events for the metrics, figures). The objective that trains
on them is :mod:`hpcvit.objectives.hits`.
"""
