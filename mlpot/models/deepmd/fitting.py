"""Fitting nets (spec deepmd.md §3): ener, dos (invariant), dipole (vector), polar (rank 2).

Each fitting maps per-atom descriptors to per-atom outputs; the model sums them per frame.
Without type embedding there is one net per atom type; nets are evaluated once per type on the
atoms of that type (index_select / index_add, no loop over atoms).

Output statistics (before training, ``compute_output_statistics``):
* ener / dos: per-type bias by least squares N b ≈ y (N: per-frame type counts) with numpy's SVD
  ``lstsq`` and ``rcond`` (``mlpot.models.output_bias``): for fixed composition this is the minimum-norm solution [COMPAT].
  Types with a preset ``atom_ener`` (TF) or ``preset_out_bias`` (PT) keep it and are subtracted
  first. ``atom_ener`` also removes the net's vacuum output of its types; ``preset_out_bias`` only
  fixes the bias (DeePMD-kit PT). The output std (residual std) is stored in ``out_std``.
* polar with ``shift_diag``: per-type mean of the diagonal (``constant_matrix``), by least squares
  on the global label or as the mean over atoms of the atomic label.
* fparam / aparam: mean and 1/std (std protected by ``data_stat_protect``) for input normalisation.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from mlpot.data.keys import (
    APARAM, ATOM_DOS, ATOM_ENERGY, DOS, ENERGY, FPARAM, N_ATOMS,
)
from mlpot.errors import ConfigError
from mlpot.models.deepmd.descriptors.env import atom_mask
from mlpot.models.deepmd.keys import resolve_precision
from mlpot.models.deepmd.keys_fitting import FIT_DOS, FIT_ENER
from mlpot.models.output_bias import OutputBias, set_by_statistic
from mlpot.models.sections import read_section
from mlpot.nn import FittingNet, Registry, gather_rows, is_tracing

__all__ = ["FITTINGS", "InvariantFitting", "EnerFitting", "DosFitting"]

FITTINGS: Registry[Any] = Registry("fitting_net type")


def _preset_rows(preset: Optional[Sequence[Any]], n_types: int, n_out: int) -> Optional[List[Any]]:
    """``preset_out_bias`` per type: None (fitted) or a list of ``n_out`` floats (a bare number
    when ``n_out`` is 1). Returns None when no type is preset."""
    if preset is None:
        return None
    key = "model/preset_out_bias"
    if not isinstance(preset, (list, tuple)) or len(preset) != n_types:
        raise ConfigError(f"needs one entry (null or a value) per type ({n_types})", key=key)
    rows: List[Any] = []
    for t, value in enumerate(preset):
        if value is None:
            rows.append(None)
            continue
        row = np.asarray(value, dtype=np.float64).reshape(-1)
        if row.size != n_out or not np.all(np.isfinite(row)):
            raise ConfigError(f"type {t}: expected {n_out} finite number(s), got {value!r}", key=key)
        rows.append(row.tolist())
    return rows if any(r is not None for r in rows) else None


def _group_by_type(types: torch.Tensor, n_types: int) -> List[torch.Tensor]:
    return [torch.nonzero(types == t).squeeze(1) for t in range(n_types)]


class InvariantFitting(torch.nn.Module):
    """Per-type fitting nets D_i (+ fparam, aparam) -> (n_out,) per atom, plus a per-type bias.

    forward(descriptor (n_atoms, dim_descrpt), types (n_atoms,), fparam (n_frames, nf) | None,
    aparam (n_atoms, na) | None, frame (n_atoms,)) -> (n_atoms, n_out) in float64 (bias added in float64).
    """

    atom_key = ATOM_ENERGY
    frame_key = ENERGY

    def __init__(self, n_types: int, dim_descrpt: int, n_out: int = 1, neuron=(120, 120, 120), *,
                 activation_function: str = "tanh", resnet_dt: bool = True, numb_fparam: int = 0, numb_aparam: int = 0,
                 rcond: Optional[float] = None, atom_ener: Optional[Sequence[Optional[float]]] = None,
                 preset_out_bias: Optional[Sequence[Any]] = None, use_aparam_as_mask: bool = False,
                 default_fparam: Optional[Sequence[float]] = None,
                 trainable=True, seed: Optional[int] = None, mixed_types: bool = False, tf_resnet: bool = False,
                 dtype=torch.float64):
        super().__init__()
        self.n_types, self.dim_descrpt, self.n_out = int(n_types), int(dim_descrpt), int(n_out)
        self.numb_fparam, self.numb_aparam = int(numb_fparam), int(numb_aparam)
        # se_a_mask: aparam[:, 0] marks real (non-zero) and virtual (0) atoms; not a net input
        self.use_aparam_as_mask = bool(use_aparam_as_mask)
        if self.use_aparam_as_mask and self.numb_aparam != 1:
            raise ConfigError(f"use_aparam_as_mask needs numb_aparam = 1 (the mask), got {self.numb_aparam}",
                              key="model/fitting_net/numb_aparam")
        self.rcond = rcond
        self.mixed_types = bool(mixed_types)
        self.atom_ener = list(atom_ener) if atom_ener else None
        if self.atom_ener is not None:
            self.atom_ener = (self.atom_ener + [None] * n_types)[:n_types]
        self.preset_out_bias = _preset_rows(preset_out_bias, self.n_types, self.n_out)
        for t, (a, p) in enumerate(zip(self.atom_ener or [None] * n_types, self.preset_out_bias or [None] * n_types)):
            if a is not None and p is not None:
                raise ConfigError(f"type {t} has both atom_ener and preset_out_bias; give one",
                                  key="model/preset_out_bias")
        in_dim = self.dim_descrpt + self.numb_fparam + (0 if self.use_aparam_as_mask else self.numb_aparam)
        n_nets = 1 if self.mixed_types else self.n_types
        self.nets = torch.nn.ModuleList(
            FittingNet(in_dim, list(neuron), self.n_out, activation=activation_function, resnet_dt=resnet_dt,
                       tf_resnet=tf_resnet, trainable=trainable, dtype=dtype, seed=None if seed is None else int(seed) + t)
            for t in range(n_nets)
        )
        self.register_buffer("bias_atom", torch.zeros(n_types, self.n_out, dtype=torch.float64))
        for t, value in enumerate(self._fixed_bias()):
            if value is not None:
                self.bias_atom[t] = torch.as_tensor(value, dtype=torch.float64)
        self.register_buffer("out_std", torch.ones(n_types, self.n_out, dtype=torch.float64))
        for name, width in (("fparam", self.numb_fparam), ("aparam", self.numb_aparam)):
            self.register_buffer(f"{name}_avg", torch.zeros(width, dtype=dtype))
            self.register_buffer(f"{name}_inv_std", torch.ones(width, dtype=dtype))
        if default_fparam is not None and len(default_fparam) != self.numb_fparam:
            raise ConfigError(f"has {len(default_fparam)} values, expected numb_fparam = {self.numb_fparam}",
                              key="model/fitting_net/default_fparam")
        # (numb_fparam,) fparam of frames that have none (rebuilt from the config: not in the state dict)
        self.register_buffer("default_fparam", None if default_fparam is None else
                             torch.tensor([float(v) for v in default_fparam], dtype=torch.float64), persistent=False)

    def _fixed_bias(self) -> List[Any]:
        """Per type the fixed bias (a float for ``atom_ener``, an (n_out,) list for
        ``preset_out_bias``) or None where the bias is fitted."""
        presets = self.preset_out_bias or [None] * self.n_types
        return [p if a is None else a for a, p in zip(self.atom_ener or [None] * self.n_types, presets)]

    @property
    def net_dtype(self) -> torch.dtype:
        return self.nets[0].layers[0].weight.dtype

    def _inputs(self, descriptor, frame, fparam, aparam) -> torch.Tensor:
        parts = [descriptor.to(self.net_dtype)]
        if self.numb_fparam:
            if fparam is None and self.default_fparam is None:
                raise ConfigError(f"the model needs fparam ({self.numb_fparam} per frame) but the batch has none", key=FPARAM)
            if fparam is None:  # default_fparam for every frame: (numb_fparam,) -> (n_atoms, numb_fparam)
                row = (self.default_fparam.to(self.net_dtype) - self.fparam_avg) * self.fparam_inv_std
                parts.append(row.expand(len(frame), -1))
            else:
                parts.append(gather_rows((fparam.to(self.net_dtype) - self.fparam_avg) * self.fparam_inv_std, frame))
        if self.numb_aparam and not self.use_aparam_as_mask:
            if aparam is None:
                raise ConfigError(f"the model needs aparam ({self.numb_aparam} per atom) but the batch has none", key=APARAM)
            parts.append((aparam.to(self.net_dtype) - self.aparam_avg) * self.aparam_inv_std)
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def net_outputs(self, inputs: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """Raw net outputs (n_atoms, n_out) in the net dtype, one net per type.

        In evaluation (eval mode, eager), atoms in type order (one frame of typical data, ASE and
        LAMMPS inputs) take contiguous groups: split, whose backward is one cat, in place of gathers
        and a scatter back (-1.3 ms of 9.9 for the water example's forward + backward at 192
        atoms). Otherwise (training: every net's parameters get a gradient, zero for an absent
        type) each type's group gets two extra rows (atom 0's inputs, added into a spare output row
        that is cut off): its size, known only from the data, is then at least 2, so that a graph
        tracer (``mlpot compile``) needs no guard on it in the backward's broadcasting checks.
        """
        if self.mixed_types:
            return self.nets[0](inputs)
        n_atoms = inputs.shape[0]
        if not self.training and not is_tracing() and bool((types[1:] >= types[:-1]).all()):
            counts = torch.bincount(types, minlength=self.n_types).tolist()
            parts = torch.split(inputs, counts)
            outputs = [self.nets[t](part) for t, part in enumerate(parts) if counts[t]]
            return torch.cat(outputs) if outputs else inputs.new_zeros(0, self.n_out)
        two = torch.zeros(2, dtype=torch.long, device=inputs.device)
        out = inputs.new_zeros(n_atoms + 1, self.n_out)
        for t, atoms in enumerate(_group_by_type(types, self.n_types)):
            rows = gather_rows(inputs, torch.cat([atoms, two]))
            out = out.index_add(0, torch.cat([atoms, two + n_atoms]), self.nets[t](rows))
        return out[:n_atoms]

    def forward(self, descriptor, rot, types, frame, fparam=None, aparam=None, vacuum=None) -> torch.Tensor:
        """``vacuum``: the descriptor of an isolated atom per type (n_types, dim_descrpt), zero
        when None (se_atten keeps its appended type embedding there)."""
        inputs = self._inputs(descriptor, frame, fparam, aparam)
        out = self.net_outputs(inputs, types)
        if self.atom_ener is not None:
            # remove the vacuum contribution: an isolated atom of a preset type has energy = its bias
            zero = torch.zeros_like(inputs[:1]).expand(self.n_types, -1)
            if vacuum is not None:
                zero = torch.cat([vacuum.to(zero.dtype), zero[:, vacuum.shape[1]:]], dim=1)
            vacuum = self.net_outputs(zero.contiguous(), torch.arange(self.n_types, device=types.device))
            preset = torch.tensor([a is not None for a in self.atom_ener], device=types.device)
            out = out - torch.where(preset[types].unsqueeze(-1), gather_rows(vacuum, types), torch.zeros_like(out))
        out = out.to(torch.float64) + self.bias_atom[types]
        if self.use_aparam_as_mask:  # virtual atoms have no energy
            out = out * atom_mask(aparam).unsqueeze(-1).to(out.dtype)
        return out

    # ---- statistics ------------------------------------------------------------------------
    def output_bias(self) -> OutputBias:
        """The per-type bias ``bias_atom`` as an :class:`~mlpot.models.output_bias.OutputBias`
        (presets from ``atom_ener`` / ``preset_out_bias`` fixed)."""
        coefficients = (lambda batch: atom_mask(batch.get(APARAM)).to(torch.float64)) if self.use_aparam_as_mask else None
        return OutputBias(self.bias_atom, self.frame_key, self._fixed_bias(), self.rcond, self.out_std, coefficients)

    def set_bias_by_statistic(self, batches: Sequence[Dict[str, torch.Tensor]]) -> Optional[Dict[str, Any]]:
        """Set ``bias_atom`` and ``out_std`` to the least-squares per-type fit of the raw frame
        label of ``batches`` (set-by-statistic; presets kept), leaving the fparam/aparam statistics.
        Returns {"bias": (n_types, n_out), "std": (n_out,)}, or None when no frame has the label."""
        return set_by_statistic(self.output_bias(), batches)

    def compute_output_statistics(self, batches: Sequence[Dict[str, torch.Tensor]], protection: float = 1e-2,
                                  output_bias: bool = True) -> Dict[str, Any]:
        """fparam/aparam normalisation and (``output_bias``) the set-by-statistic bias. Without
        ``output_bias`` the fitted rows of the bias are zero: the model is a member of a composite
        model that owns the one output bias (DeePMD-kit's linear and ZBL models)."""
        summary: Dict[str, Any] = {}
        if output_bias:
            result = self.set_bias_by_statistic(batches)
            if result is not None:
                summary["bias_atom"] = result["bias"].tolist()
                summary["out_std"] = np.asarray(result["std"]).tolist()
        else:
            with torch.no_grad():
                for t, row in enumerate(self._fixed_bias()):
                    self.bias_atom[t] = 0.0 if row is None else torch.as_tensor(row, dtype=torch.float64)
        for name, key, width in (("fparam", FPARAM, self.numb_fparam),
                                 ("aparam", APARAM, 0 if self.use_aparam_as_mask else self.numb_aparam)):
            if not width:
                continue
            data = [b[key].detach().to(torch.float64).reshape(-1, width) for b in batches if key in b]
            if key == FPARAM and self.default_fparam is not None:  # frames without fparam count with the default
                data += [self.default_fparam.expand(len(b[N_ATOMS]), -1) for b in batches if key not in b]
            if not data:
                raise ConfigError(f"numb_{name} = {width} but no sample batch has {key}", key=f"model/fitting_net/numb_{name}")
            stacked = torch.cat(data)
            std = stacked.std(dim=0, unbiased=False).clamp(min=protection)
            getattr(self, f"{name}_avg").copy_(stacked.mean(0))
            getattr(self, f"{name}_inv_std").copy_(1.0 / std)
        return summary


class EnerFitting(InvariantFitting):
    """Energy fitting: one output per atom, eV. ``forward`` returns (n_atoms, 1)."""

    def center_initial_output(self, mean_net_output: torch.Tensor, counts: torch.Tensor) -> None:
        """Shift the output-layer bias so the untrained nets average zero per type.

        mean_net_output: (n_types, 1) mean raw net output per atom type over the statistics sample
        (eV); counts: (n_types,) atoms behind each mean. DeePMD-kit draws this bias from N(0, 1),
        so an untrained water model is off by ~1 eV/atom, an offset that only the (small, early)
        energy term of the loss removes; on the water example energies then lag the forces for
        thousands of steps. Centred, training starts at the label-regressed energies (bias_atom).
        """
        with torch.no_grad():
            if self.mixed_types:
                total = counts.sum()
                if total > 0:
                    shift = (mean_net_output * counts.unsqueeze(1)).sum(0) / total
                    self.nets[0].layers[-1].bias -= shift.to(self.net_dtype)
                return
            for t in range(self.n_types):
                if counts[t] > 0:
                    self.nets[t].layers[-1].bias -= mean_net_output[t].to(self.net_dtype)


class DosFitting(InvariantFitting):
    """DOS fitting: ``numb_dos`` outputs per atom (states/eV), per-type bias from the global DOS."""

    atom_key = ATOM_DOS
    frame_key = DOS


# ---- configuration ------------------------------------------------------------------------
def _invariant_from_config(cls, section, n_types, descriptor, dtype, path="model/fitting_net", table=FIT_ENER):
    values = read_section(section, path, table, f"{cls.__name__}Section")
    values.pop("type")
    dtype = resolve_precision(values.pop("precision"), dtype, path)
    trainable = values.pop("trainable")
    n_layers = len(values["neuron"]) + 1
    if isinstance(trainable, list) and len(trainable) != n_layers:
        raise ConfigError(f"has {len(trainable)} entries, expected {n_layers} (one per layer)", key=f"{path}/trainable")
    return values, dtype, trainable


def _ener_from_config(cls, section, n_types, descriptor, dtype, path="model/fitting_net"):
    values, dtype, trainable = _invariant_from_config(cls, section, n_types, descriptor, dtype, path)
    return cls(n_types, descriptor.dim_out, 1, values.pop("neuron"), trainable=trainable, dtype=dtype,
               mixed_types=getattr(descriptor, "mixed_types", False), **values)


def _dos_from_config(cls, section, n_types, descriptor, dtype, path="model/fitting_net"):
    values, dtype, trainable = _invariant_from_config(cls, section, n_types, descriptor, dtype, path, FIT_DOS)
    n_out = int(values.pop("numb_dos"))
    return cls(n_types, descriptor.dim_out, n_out, values.pop("neuron"), trainable=trainable, dtype=dtype,
               mixed_types=getattr(descriptor, "mixed_types", False), **values)


EnerFitting.from_config = classmethod(_ener_from_config)
DosFitting.from_config = classmethod(_dos_from_config)
