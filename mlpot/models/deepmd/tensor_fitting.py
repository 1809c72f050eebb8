"""Equivariant fittings on the se_e2_a rotation block (spec deepmd.md §3.2-3.3).

With g_i = A_i[1:4]^T (M1 x 3, ``rot`` of the descriptor) and per-type nets on the invariant
descriptor:
* dipole: a_i (M1,) -> p_i = a_i^T g_i, (n_atoms, 3); no output bias;
* polar: B_i = diag(b_i) (``fit_diag``) or sym(b_i as M1 x M1) -> α_i = scale[t] g_i^T B_i g_i
  (+ scale[t] c[t] I with ``shift_diag``; c from data), (n_atoms, 3, 3).
Types outside ``sel_type`` output zero. Both rotate with the structure (vector / rank-2 tensor).
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
import torch

from mlpot.data.keys import ATOM_TYPES, ATOMIC_DIPOLE, ATOMIC_POLARIZABILITY, BATCH, DIPOLE, POLARIZABILITY, weight_key
from mlpot.errors import ConfigError
from mlpot.models.deepmd.fitting import InvariantFitting
from mlpot.models.deepmd.keys import resolve_precision
from mlpot.models.deepmd.keys_fitting import FIT_DIPOLE, FIT_POLAR
from mlpot.models.sections import read_section
from mlpot.models.output_bias import least_squares_bias

__all__ = ["DipoleFitting", "PolarFitting"]

class _TensorFitting(InvariantFitting):
    """Per-type nets with ``n_out`` outputs and a ``sel_type`` mask; no energy-like bias."""

    def __init__(self, n_types, dim_descrpt, dim_rot, n_out, neuron, sel_type=None, **kwargs):
        super().__init__(n_types, dim_descrpt, n_out, neuron, **kwargs)
        if not dim_rot:
            raise ConfigError("needs a descriptor with an equivariant block (se_e2_a, hybrid of se_e2_a)", key="model/fitting_net/type")
        self.dim_rot = int(dim_rot)
        selected = torch.zeros(n_types, dtype=torch.bool)
        selected[list(range(n_types)) if sel_type is None else [int(t) for t in sel_type]] = True
        self.register_buffer("selected", selected, persistent=False)

    def _raw(self, descriptor, types, frame, fparam, aparam) -> torch.Tensor:
        out = self.net_outputs(self._inputs(descriptor, frame, fparam, aparam), types)
        return out * self.selected[types].unsqueeze(-1).to(out.dtype)

    @classmethod
    def _values(cls, section, n_types, descriptor, dtype, path, table):
        values = read_section(section, path, table, f"{cls.__name__}Section")
        values.pop("type")
        values["dtype"] = resolve_precision(values.pop("precision"), dtype, path)
        values["mixed_types"] = getattr(descriptor, "mixed_types", False)
        return values


class DipoleFitting(_TensorFitting):
    """forward(...) -> atomic dipoles (n_atoms, 3) in the label unit (float64)."""

    atom_key = ATOMIC_DIPOLE
    frame_key = DIPOLE

    def __init__(self, n_types, dim_descrpt, dim_rot, neuron=(120, 120, 120), **kwargs):
        super().__init__(n_types, dim_descrpt, dim_rot, int(dim_rot), neuron, **kwargs)

    @classmethod
    def from_config(cls, section, n_types, descriptor, dtype, path="model/fitting_net"):
        values = cls._values(section, n_types, descriptor, dtype, path, FIT_DIPOLE)
        return cls(n_types, descriptor.dim_out, descriptor.dim_rot, values.pop("neuron"), **values)

    def forward(self, descriptor, rot, types, frame, fparam=None, aparam=None) -> torch.Tensor:
        coefficients = self._raw(descriptor, types, frame, fparam, aparam)  # (n_atoms, M1)
        return torch.einsum("nm,nmc->nc", coefficients, rot.to(coefficients.dtype)).to(torch.float64)

    def compute_output_statistics(self, batches, protection: float = 1e-2, output_bias: bool = True) -> Dict[str, Any]:
        return {}  # no output bias for dipoles (spec §3.2)


class PolarFitting(_TensorFitting):
    """forward(...) -> atomic polarizabilities (n_atoms, 3, 3) in the label unit (float64)."""

    atom_key = ATOMIC_POLARIZABILITY
    frame_key = POLARIZABILITY

    def __init__(self, n_types, dim_descrpt, dim_rot, neuron=(120, 120, 120), *, fit_diag: bool = True,
                 scale=1.0, shift_diag: bool = True, **kwargs):
        width = int(dim_rot) if fit_diag else int(dim_rot) ** 2
        super().__init__(n_types, dim_descrpt, dim_rot, width, neuron, **kwargs)
        self.fit_diag, self.shift_diag = bool(fit_diag), bool(shift_diag)
        scale = [float(scale)] * n_types if np.isscalar(scale) else [float(s) for s in scale]
        if len(scale) != n_types:
            raise ConfigError(f"has {len(scale)} entries, expected one per type ({n_types})", key="model/fitting_net/scale")
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float64))
        self.register_buffer("constant_matrix", torch.zeros(n_types, dtype=torch.float64))

    @classmethod
    def from_config(cls, section, n_types, descriptor, dtype, path="model/fitting_net"):
        values = cls._values(section, n_types, descriptor, dtype, path, FIT_POLAR)
        return cls(n_types, descriptor.dim_out, descriptor.dim_rot, values.pop("neuron"), **values)

    def forward(self, descriptor, rot, types, frame, fparam=None, aparam=None) -> torch.Tensor:
        raw = self._raw(descriptor, types, frame, fparam, aparam)
        g = rot.to(raw.dtype)  # (n_atoms, M1, 3)
        if self.fit_diag:
            alpha = torch.einsum("nm,nma,nmb->nab", raw, g, g)
        else:
            matrix = raw.reshape(-1, self.dim_rot, self.dim_rot)
            matrix = 0.5 * (matrix + matrix.transpose(1, 2))
            alpha = torch.einsum("nma,nmk,nkb->nab", g, matrix, g)
        alpha = alpha.to(torch.float64) * self.scale[types].reshape(-1, 1, 1)
        if self.shift_diag:
            shift = (self.scale * self.constant_matrix)[types] * self.selected[types].to(torch.float64)
            alpha = alpha + shift.reshape(-1, 1, 1) * torch.eye(3, dtype=torch.float64)
        return alpha

    def compute_output_statistics(self, batches, protection: float = 1e-2, output_bias: bool = True) -> Dict[str, Any]:
        """c[t]: mean diagonal per type, from atomic labels (mean over atoms) or global labels (least squares)."""
        if not self.shift_diag:
            return {}
        sums, counts, frame_counts, frame_diag = np.zeros(self.n_types), np.zeros(self.n_types), [], []
        for batch in batches:
            types = batch[ATOM_TYPES]
            if ATOMIC_POLARIZABILITY in batch:
                weight = batch.get(weight_key(ATOMIC_POLARIZABILITY))
                atom_ok = torch.ones(len(types), dtype=torch.bool) if weight is None else weight[batch[BATCH]] > 0
                diag = torch.diagonal(batch[ATOMIC_POLARIZABILITY].reshape(-1, 3, 3), dim1=1, dim2=2).mean(-1).to(torch.float64)
                ok = atom_ok & self.selected[types]
                np.add.at(sums, types[ok].numpy(), diag[ok].numpy())
                np.add.at(counts, types[ok].numpy(), 1.0)
            elif POLARIZABILITY in batch:
                n_frames = batch[POLARIZABILITY].shape[0]
                count = torch.zeros(n_frames, self.n_types, dtype=torch.float64)
                count.index_put_((batch[BATCH], types), torch.ones(len(types), dtype=torch.float64), accumulate=True)
                weight = batch.get(weight_key(POLARIZABILITY))
                ok = torch.ones(n_frames, dtype=torch.bool) if weight is None else weight > 0
                frame_counts.append((count * self.selected.to(torch.float64))[ok].numpy())
                frame_diag.append(torch.diagonal(batch[POLARIZABILITY].reshape(-1, 3, 3), dim1=1, dim2=2).mean(-1)[ok].to(torch.float64).numpy())
        if counts.sum() > 0:
            constant = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
        elif frame_counts:
            constant = least_squares_bias(np.concatenate(frame_counts), np.concatenate(frame_diag))[:, 0]
        else:
            return {}
        constant = constant / self.scale.numpy()
        self.constant_matrix.copy_(torch.as_tensor(constant))
        return {"constant_matrix": constant.tolist()}


