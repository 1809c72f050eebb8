"""mlpot: machine-learned models of atoms and electrons from first-principles data.

Four families share one data model and one training engine: descriptor potentials
(DeePMD-style), equivariant message passing (NequIP-style), self-consistent fixed-point
electrostatics and neural empirical pseudopotentials fitted to band structures.
"""

__version__ = "0.1.0"
