"""Implementations of the ``mlpot`` sub-commands (top layer: may import every other layer)."""
