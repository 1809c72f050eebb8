"""Compressed DeePMD models (``mlpot compress``, DeePMD-kit's ``dp compress``).

``compress(input, output, min_nbor_dist, ...)`` loads any model file ``load_model`` reads, replaces
the embedding nets of its descriptor by quintic tables (``mlpot.models.deepmd.compression``) and
writes an ordinary frozen file (``mlpot.calculators.export``): its model section carries DeePMD-kit's
``compress`` record and its state dict the tables, so ``load_model`` (``mlpot test``, the ASE
calculator, ``mlpot md``, LAMMPS) reads it like any frozen model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from mlpot.calculators.export import PathLike, load_model, write_frozen

__all__ = ["compress"]


def compress(input: PathLike, output: PathLike, min_nbor_dist: float, step: float = 0.01, extrapolate: float = 5,
             frequency: int = -1, head: Optional[str] = None) -> Dict[str, Any]:
    """Write the compressed model of ``input`` to ``output``; returns the frozen file's metadata.

    min_nbor_dist: Å, the smallest neighbour distance of the training data (sets the table range);
    step: fine table step in normalised s~ units (coarse step 10 x step, up to ``extrapolate`` x the
    upper bound); frequency: check the table range every that many evaluations (-1: never); head:
    the task of a multi-task model to compress (its single-task model is written, as dp compress --head).
    The written file is loaded back once, so a file that was written is known to load.
    """
    from mlpot.models.deepmd.compression import compress_model

    input, output = Path(input), Path(output)
    model = compress_model(load_model(input, head=head), min_nbor_dist, step=step, extrapolate=extrapolate, frequency=frequency,
                           model_file=str(input))
    dtype = str(model.dtype).removeprefix("torch.")
    metadata = write_frozen(model, output, dtype, {"source": str(input.resolve()), "step": None, "head": head,
                                                   "compress": model.config["compress"]})
    load_model(output)
    return metadata
