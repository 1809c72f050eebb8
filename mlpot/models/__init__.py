"""Atomistic models: the model interface, DeePMD descriptors and fittings, and ``build_model``."""

from mlpot.models.base import AtomisticModel, edge_vectors
from mlpot.models.registry import MODELS, build_model, resolve_auto_sel

__all__ = ["AtomisticModel", "edge_vectors", "MODELS", "build_model", "resolve_auto_sel"]
