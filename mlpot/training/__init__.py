"""mlpot.training: the one training engine shared by every model family.

* :mod:`~mlpot.training.optim` — ``build_optimizer(name, params_or_groups, **kw)`` (any torch.optim
  class by name), ``build_lr_scheduler(optimizer, type, **options)``.
* :mod:`~mlpot.training.schedules` — lr schedules (DeePMD ``exp`` exactly, step, cosine, constant,
  warmup).
* :mod:`~mlpot.training.losses` — loss terms by name, weighted means over present labels,
  constant or lr-coupled prefactors, error sums for metrics.
* :mod:`~mlpot.training.trainer` — :class:`Trainer` (stages, EMA, clipping, validation, logs,
  atomic checkpoints, exact resume, DDP via torchrun).

Submodules are imported on use so that ``import mlpot.training.optim`` stays light.
"""

__all__ = ["optim", "schedules", "losses", "ema", "checkpoint", "logging", "metrics", "stages",
           "distributed", "data_setup", "trainer"]
