"""Deterministic weights of the NVNMD reference model (numpy only: both DeePMD-kit's Python and
mlpot's import it, so that neither the weights nor a random generator need to be committed).

``formula_weights(shapes)``: for every weight.npy name and shape of the nets (``filter_type_all.*``,
``layer_*``, ``final_layer_*``) a fixed array of sines, matrices scaled by 1/sqrt(n_in + n_out)
as DeePMD-kit initialises them, biases of amplitude 0.5.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np


def _seed(name: str) -> int:
    return sum((index + 1) * ord(char) for index, char in enumerate(name)) % 997


def formula_weights(shapes: Dict[str, Tuple[int, ...]]) -> Dict[str, np.ndarray]:
    out = {}
    for name, shape in shapes.items():
        count = int(np.prod(shape))
        phase = np.arange(count, dtype=np.float64) * 0.7 + 0.013 * _seed(name)
        values = np.sin(phase) * np.cos(0.37 * phase + 1.0)
        scale = 1.0 / np.sqrt(shape[0] + shape[1]) if len(shape) == 2 else 0.5
        out[name] = (scale * values).reshape(shape)
    return out
