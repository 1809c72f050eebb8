"""mlpot.calculators: the ASE calculator, frozen models (freeze / load_model) and evaluation.

* :class:`MlpotCalculator` — ASE calculator (energy, free_energy, forces, virial, stress);
* :func:`freeze`, :func:`load_model` — standalone model files;
* :mod:`mlpot.calculators.evaluate` — errors per label, ``dp test`` lines and detail files;
* :mod:`mlpot.calculators.torchsim` — ``MlpotTorchSimModel``, the torch-sim model (not imported
  here: it loads torch-sim).
"""

from mlpot.calculators.ase import MlpotCalculator
from mlpot.calculators.export import freeze, load_model

__all__ = ["MlpotCalculator", "freeze", "load_model"]
