"""One task's training, in rooms: ``distributed`` (process group, collectives, RNG state), ``stop`` (signals),
``sampler`` (which samples, which steps), ``optim`` (optimiser, schedule, precision, kernels), ``state`` (what a
checkpoint holds), ``report`` (markers, logs, MLflow), ``loop`` (the :class:`Trainer`)."""
