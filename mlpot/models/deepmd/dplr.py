"""DPLR long-range electrostatics: DeePMD-kit's ``model/modifier`` of type ``dipole_charge``.

A frozen dipole ("deep Wannier", DW) model predicts, for every atom of its ``sel_type`` (water: O),
the displacement d_i (Å) of its Wannier centroid (WC), W_i = R_i + d_i. Ions carry
``sys_charge_map[type]`` (e), WCs carry ``model_charge_map[k]`` (e) for the k-th selected type. The
long-range energy is the reciprocal-space Ewald sum of ions + WCs (Zhang et al., JCP 156, 124107
(2022); DeePMD-kit ``ewald_recp``):

    E_lr = k_e / (2 pi Omega) sum_{m != 0, |m_a| <= K_a / 2} exp(-pi^2 m^2 / beta^2) / m^2 |S(m)|^2,

beta = ``ewald_beta`` (1/Å), K_a = ceil(|a_a| / ``ewald_h``) rounded up to even (DeePMD-kit's
grid rule, ``ewald_h`` in Å), S(m) the structure factor of ions and WCs. There is no real-space
part: the short range is the DP model's. It is evaluated by ``mlpot.electrostatics`` (one k-space
kernel for every model). Forces and virials go through the WC positions, so through the DW model
(autograd: the chain rule DeePMD-kit's LAMMPS ``fix dplr`` applies by hand).

External field (DeePMD-kit ``fix dplr ... efield Ex Ey Ez``, the request of DeePMD-kit #1210): a
uniform field E (V/Å) adds ``-sum_s q_s r_s . E`` over ions and WCs (forces q E on each, the WC's
passed to the atoms through the DW model). mlpot reads it from the modifier key ``efield``
(constant, the physical field as in ``fix dplr``) and from the batch's EXTERNAL_FIELD (per frame,
mlpot's convention: the gradient of the applied potential, i.e. minus the field); both add.

The DPLR model is ``LinearEnergyModel([short range, DipoleChargeLongRange], [1, 1])``: one output
bias, fitted to label - E_lr (``models/compose.py``). Trained against the raw labels, its loss is
term by term DeePMD-kit's loss of the short-range model on the modified labels
(E - E_lr, F - F_lr, V - V_lr), since the long-range part has no trainable parameter.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from mlpot.data.keys import ATOM_ENERGY, ATOM_TYPES, ATOMIC_DIPOLE, BATCH, CELL, ENERGY, EXTERNAL_FIELD, PBC, POSITIONS
from mlpot.electrostatics import gaussian_charge_reciprocal_potentials, half_space_miller_kvectors
from mlpot.errors import CheckpointError, ConfigError, DataError
from mlpot.models.base import AtomisticModel
from mlpot.models.compose import FrozenModel, LinearEnergyModel, build_frozen
from mlpot.models.deepmd.keys import read_modifier_section, resolve_precision
from mlpot.nn import gather_rows, is_tracing, scatter_sum

__all__ = ["DipoleChargeLongRange", "build_dipole_charge", "deepmd_ewald_grid", "with_dipole_charge_modifier"]

_PATH = "model/modifier"


def deepmd_ewald_grid(cell: torch.Tensor, spacing: float) -> List[int]:
    """DeePMD-kit's reciprocal grid K_a (even, K_a * spacing >= |a_a|) of one cell (3, 3) Å; spacing Å."""
    sizes = []
    for length in torch.linalg.norm(cell.detach(), dim=1).tolist():
        k = int(math.ceil(length / spacing - 1e-12))
        sizes.append(k + (k % 2))
    return sizes


class DipoleChargeLongRange(AtomisticModel):
    """Long-range energy of ions + Wannier centroids (module docstring). Outputs ATOM_ENERGY (n_atoms,)
    eV (0.5 q V of each ion, plus that of its WC, plus the field terms) and ENERGY (n_frames,) eV.

    dipole_model: frozen DW model returning ATOMIC_DIPOLE (n_atoms, 3) Å; sel_types: its types with a
    WC; model_charge_map (per sel type) and sys_charge_map (per type) in e; ewald_h Å; ewald_beta
    1/Å; efield (3,) V/Å or None.
    """

    output_keys = (ATOM_ENERGY, ENERGY)

    def __init__(self, type_map: Sequence[str], dipole_model: AtomisticModel, sel_types: Sequence[int],
                 model_charge_map: Sequence[float], sys_charge_map: Sequence[float], ewald_h: float = 1.0,
                 ewald_beta: float = 0.4, efield: Optional[Sequence[float]] = None):
        super().__init__()
        n_types = len(type_map)
        self.type_map, self.dipole_model = list(type_map), dipole_model
        self.cutoff = float(dipole_model.cutoff)
        self.ewald_h, self.ewald_beta = float(ewald_h), float(ewald_beta)
        wc_charge = torch.zeros(n_types, dtype=torch.float64)
        wc_charge[list(sel_types)] = torch.tensor([float(q) for q in model_charge_map], dtype=torch.float64)
        has_wc = torch.zeros(n_types, dtype=torch.bool)
        has_wc[list(sel_types)] = True
        # settings of the model section, not state: rebuilt from the section, never read from weights
        self.register_buffer("ion_charge", torch.tensor([float(q) for q in sys_charge_map], dtype=torch.float64),
                             persistent=False)
        self.register_buffer("wc_charge", wc_charge, persistent=False)
        self.register_buffer("has_wc", has_wc, persistent=False)
        field = [0.0, 0.0, 0.0] if efield is None else [float(e) for e in efield]
        self.register_buffer("efield", torch.tensor(field, dtype=torch.float64), persistent=False)

    @property
    def input_keys(self):
        return (EXTERNAL_FIELD,)

    def compute_statistics(self, batches, **kwargs) -> Dict[str, Any]:
        """Nothing to fit (no trainable parameter); refuses to train with a DW model whose weights are not
        read from ``model_name`` (a frozen DPLR section rebuilt without its file)."""
        if not getattr(self.dipole_model, "weights_from_file", True):
            raise ConfigError(f"{self.dipole_model.model_file}: no such file; training needs the DW model's weights",
                              key=f"{_PATH}/model_name")
        return {}

    def _check_neutral(self, charges: torch.Tensor, frame: torch.Tensor, n_frames: int) -> None:
        """DataError naming the first frame whose ions + WCs carry a net charge (> 1e-6 e)."""
        net = scatter_sum(charges.detach().to(torch.float64), frame, n_frames)
        bad = torch.nonzero(net.abs() > 1e-6).flatten()
        if bad.numel():
            f = int(bad[0])
            raise DataError(f"ions + Wannier centroids carry a net charge of {float(net[f]):.6g} e; the DPLR "
                            "reciprocal sum needs neutral frames (check model/modifier/sys_charge_map and "
                            "model_charge_map against the atom types)", frame=f, key=ATOM_TYPES)

    @staticmethod
    def _check_periodic(batch: Dict[str, torch.Tensor], cells: torch.Tensor) -> None:
        """DataError naming the first frame that is not periodic in all directions (or has no cell volume)."""
        periodic = torch.linalg.det(cells.detach()).abs() > 1e-6
        if PBC in batch:
            periodic = periodic & batch[PBC].to(torch.bool).all(dim=-1)
        bad = torch.nonzero(~periodic).flatten()
        if bad.numel():
            raise DataError("the DPLR reciprocal sum needs a frame periodic in all three directions with a cell",
                            frame=int(bad[0]), key=PBC)

    def sites(self, batch: Dict[str, torch.Tensor]):
        """Ions then WCs: positions (n_atoms + n_wc, 3) Å, charges (n_atoms + n_wc,) e, owner atom
        (n_atoms + n_wc,) and frame (n_atoms + n_wc,) of each site. WCs differentiable through the DW model."""
        positions, types = batch[POSITIONS], batch[ATOM_TYPES]
        dipoles = self.dipole_model(batch)[ATOMIC_DIPOLE].to(positions.dtype)
        owner = torch.nonzero(self.has_wc[types]).squeeze(-1)  # (n_wc,) ascending
        wc_positions = gather_rows(positions, owner) + gather_rows(dipoles, owner)
        n_atoms = positions.shape[0]
        site_owner = torch.cat([torch.arange(n_atoms, device=positions.device), owner])
        charges = torch.cat([self.ion_charge[types], self.wc_charge[types[owner]]]).to(positions.dtype)
        return torch.cat([positions, wc_positions]), charges, site_owner, batch[BATCH][site_owner]

    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """batch -> {ATOM_ENERGY (n_atoms,), ENERGY (n_frames,)} in eV (class docstring)."""
        site_positions, charges, owner, frame = self.sites(batch)
        cells = batch[CELL].to(site_positions.dtype)
        n_frames, n_atoms = cells.shape[0], batch[POSITIONS].shape[0]
        if not is_tracing():
            self._check_neutral(charges, frame, n_frames)
            self._check_periodic(batch, cells)
        order = torch.argsort(frame, stable=True)  # sites grouped by frame
        bounds = torch.searchsorted(frame[order], torch.arange(n_frames + 1, device=frame.device)).tolist()
        potentials = []
        for f in range(n_frames):  # frames, not atoms: each frame has its own k-set
            index = order[bounds[f]:bounds[f + 1]]
            kvectors = half_space_miller_kvectors(cells[f], [k // 2 for k in deepmd_ewald_grid(cells[f], self.ewald_h)])
            potentials.append(gaussian_charge_reciprocal_potentials(
                gather_rows(site_positions, index), charges[index], cells[f], kvectors, self.ewald_beta))
        potential = torch.zeros_like(charges).index_add(0, order, torch.cat(potentials))
        gradient = -self.efield.to(site_positions.dtype).expand(n_frames, 3)  # potential gradient, V/Å
        if EXTERNAL_FIELD in batch:
            gradient = gradient + batch[EXTERNAL_FIELD].to(site_positions.dtype)
        field_energy = charges * (site_positions * gather_rows(gradient, frame)).sum(-1)
        site_energy = 0.5 * charges * potential + field_energy
        atomic = torch.zeros(n_atoms, dtype=site_energy.dtype, device=site_energy.device).index_add(0, owner, site_energy)
        return {ATOM_ENERGY: atomic.to(torch.float64), ENERGY: scatter_sum(atomic, batch[BATCH], n_frames).to(torch.float64)}


def _dipole_model(values: Dict[str, Any], dtype: torch.dtype, build: Callable[..., AtomisticModel]) -> FrozenModel:
    """The DW model: from the ``model_name`` file, else (a frozen DPLR file being loaded, whose weights
    hold the DW weights) rebuilt from the ``dw_model`` section the build recorded; ``weights_from_file``
    tells which."""
    embedded = values.get("dw_model")
    if embedded is not None and not Path(values["model_name"]).is_file():
        model = build(embedded["model_config"], resolve_precision(embedded.get("precision"), dtype, f"{_PATH}/dw_model"))
        frozen = FrozenModel(model.eval(), values["model_name"])
        frozen.weights_from_file = False
        return frozen
    try:
        frozen = build_frozen({"type": "frozen", "model_file": values["model_name"]}, dtype, build)
    except (ConfigError, CheckpointError) as error:  # the reader names model/model_file: name the modifier's key
        raise type(error)(error.message, key=f"{_PATH}/model_name", file=error.file) from None
    if ATOMIC_DIPOLE not in frozen.output_keys:
        raise ConfigError(f"{values['model_name']} is not a dipole model (outputs {list(frozen.output_keys)}); "
                          "train one with fitting_net type dipole and freeze it", key=f"{_PATH}/model_name")
    frozen.weights_from_file = True
    return frozen


def _sel_types(frozen: FrozenModel) -> List[int]:
    selected = getattr(getattr(frozen.model, "fitting", None), "selected", None)
    if selected is None:
        raise ConfigError("the DW model has no sel_type (a DeePMD dipole fitting is needed)", key=f"{_PATH}/model_name")
    return [int(t) for t in torch.nonzero(selected).flatten().tolist()]


def build_dipole_charge(section: Dict[str, Any], type_map: Sequence[str], dtype: torch.dtype,
                        build: Callable[..., AtomisticModel]) -> DipoleChargeLongRange:
    """The long-range member of a ``dipole_charge`` modifier section (errors name ``model/modifier/<key>``)."""
    values = read_modifier_section(section, _PATH)
    if len(values["sys_charge_map"]) != len(type_map):
        raise ConfigError(f"has {len(values['sys_charge_map'])} entries, expected one per type of type_map {list(type_map)}",
                          key=f"{_PATH}/sys_charge_map")
    for name in ("ewald_h", "ewald_beta"):
        if not values[name] > 0:
            raise ConfigError(f"must be > 0; got {values[name]}", key=f"{_PATH}/{name}")
    if values["efield"] is not None and len(values["efield"]) != 3:
        raise ConfigError(f"expected [Ex, Ey, Ez] in V/Å; got {values['efield']}", key=f"{_PATH}/efield")
    frozen = _dipole_model(values, dtype, build)
    section["dw_model"] = {"model_config": frozen.model.config, "precision": str(frozen.model.dtype).removeprefix("torch.")}
    if list(frozen.type_map) != list(type_map):
        raise ConfigError(f"the DW model's type_map {frozen.type_map} differs from model/type_map {list(type_map)}",
                          key=f"{_PATH}/model_name")
    sel_types = _sel_types(frozen)
    if len(values["model_charge_map"]) != len(sel_types):
        raise ConfigError(f"has {len(values['model_charge_map'])} entries, expected one per sel_type of the DW model "
                          f"({sel_types})", key=f"{_PATH}/model_charge_map")
    return DipoleChargeLongRange(type_map, frozen, sel_types, values["model_charge_map"], values["sys_charge_map"],
                                 values["ewald_h"], values["ewald_beta"], values["efield"])


def with_dipole_charge_modifier(builder: Callable[[Dict[str, Any], torch.dtype], AtomisticModel],
                                build: Callable[..., AtomisticModel]):
    """Wrap the standard-model builder: a ``modifier`` section makes it E_sr + E_lr (module docstring)."""

    def build_with_modifier(config: Dict[str, Any], dtype: torch.dtype) -> AtomisticModel:
        modifier = config.get("modifier")
        inner = builder({k: v for k, v in config.items() if k != "modifier"}, dtype)
        if modifier is None:
            return inner
        if ENERGY not in inner.output_keys:
            raise ConfigError("a dipole_charge modifier needs an energy model (fitting_net type ener)", key=_PATH)
        long_range = build_dipole_charge(modifier, inner.type_map, dtype, build)
        return LinearEnergyModel(inner.type_map, [inner, long_range], [1.0, 1.0])

    build_with_modifier.__doc__ = builder.__doc__
    return build_with_modifier
