"""Building blocks with no physics: DeePMD-style MLPs, activations, switching functions, scatter sums, registry."""

from mlpot.nn.activations import ACTIVATIONS, get_activation
from mlpot.nn.chunking import atom_chunk_size, atom_chunks, map_row_chunks
from mlpot.nn.mlp import MLP, EmbeddingNet, FittingNet, MLPLayer, set_compute_dtype
from mlpot.nn.radial import BesselBasis, GaussianBasis, PolynomialCutoff, polynomial_cutoff
from mlpot.nn.registry import Registry
from mlpot.nn.scatter import gather_rows, scatter_sum, segment_sum
from mlpot.nn.switch import smooth_switch
from mlpot.nn.tracing import is_tracing

__all__ = [
    "ACTIVATIONS",
    "get_activation",
    "atom_chunks",
    "atom_chunk_size",
    "map_row_chunks",
    "MLP",
    "MLPLayer",
    "EmbeddingNet",
    "set_compute_dtype",
    "FittingNet",
    "BesselBasis",
    "GaussianBasis",
    "PolynomialCutoff",
    "polynomial_cutoff",
    "Registry",
    "gather_rows",
    "scatter_sum",
    "segment_sum",
    "smooth_switch",
    "is_tracing",
]
