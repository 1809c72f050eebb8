"""Atomistic models: the model interface, the model-type registry and ``build_model``; the DeePMD
family in ``mlpot.models.deepmd``, the equivariant families in ``mlpot.models.equivariant``."""

from mlpot.models.base import AtomisticModel, edge_vectors
from mlpot.models.registry import MODELS, build_model

__all__ = ["AtomisticModel", "edge_vectors", "MODELS", "build_model"]
