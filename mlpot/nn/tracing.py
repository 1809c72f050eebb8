"""Whether the code runs under a graph tracer (``mlpot compile``: make_fx / torch.export / dynamo).

Models read values back to Python only for checks and for shape savings (compact neighbour
columns, skipped empty type groups); under a tracer those values are symbolic, so such code asks
:func:`is_tracing` and takes its fixed-shape branch (the same numbers, computed on fixed-width
blocks).
"""

from __future__ import annotations

import torch

__all__ = ["is_tracing"]


def is_tracing() -> bool:
    """True inside torch.compile / torch.export, TorchScript tracing or an FX proxy tracer."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    return get_proxy_mode() is not None
