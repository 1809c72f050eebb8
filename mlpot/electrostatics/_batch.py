"""Frame-wise electrostatics of a collated batch: energies, field features and ESPs.

A batch may mix periodic, slab and isolated frames; each frame is solved on its own (its own
k-vectors, neighbour list and correction), so cost and memory grow linearly with the number of
frames and there is no batch-wide k-vector x atom matrix. One solve per frame serves the energy,
the features of every width and the ESPs together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import torch

from mlpot.data.keys import (
    ATOMIC_MULTIPOLES, BATCH, CELL, EXTERNAL_FIELD, FERMI_LEVEL, PBC, POSITIONS, PTR, weight_key,
)
from mlpot.electrostatics._coulomb import PBC_METHODS, resolve_handling
from mlpot.electrostatics._density import split_multipoles
from mlpot.electrostatics._features import (
    average_field_feature_norms,
    expand_feature_norms,
    external_field_features,
    fermi_level_features,
    n_field_features,
    potential_to_features,
)
from mlpot.electrostatics._solver import CoulombOptions, Receiver, energy_from_fields, frame_fields
from mlpot.errors import ConfigError

__all__ = ["FrameWiseElectrostatics", "batch_method"]


def batch_method(method: str, pbc: torch.Tensor) -> str:
    """Per-frame method of a batch: the spec's ``auto`` is realspace if every frame is FFF, else
    mixed_periodic. pbc: (n_frames, 3) bool."""
    if method != "auto":
        return method
    return "realspace" if not bool(pbc.any()) else "mixed_periodic"


@dataclass
class FrameWiseElectrostatics:
    """Electrostatics of Gaussian multipole densities over a batch (spec mace_scf.md §2.1-2.4).

    sigma: density width Å (``atomic_multipoles_smearing_width``); method: one of PBC_METHODS
    (``electrostatic_pbc_method``); include_self_interaction (energy); field_feature_widths (Å),
    field_feature_max_l, include_field_si (own density in own features), fermi_level_offset (eV),
    field_feature_norms: None, or a list l-major width-minor (resolve "average" with
    ``average_field_feature_norms`` beforehand); options: numerical CoulombOptions.
    """

    sigma: float = 1.5
    method: str = "mixed_periodic"
    include_self_interaction: bool = True
    field_feature_widths: Sequence[float] = (1.0, 2.0)
    field_feature_max_l: int = 1
    include_field_si: bool = False
    fermi_level_offset: float = 0.0
    field_feature_norms: Optional[Sequence[float]] = None
    options: CoulombOptions = field(default_factory=CoulombOptions)

    def __post_init__(self):
        if self.method not in PBC_METHODS:
            raise ConfigError(f"unknown method {self.method!r}; expected one of {', '.join(PBC_METHODS)}", key="electrostatic_pbc_method")
        if not self.sigma > 0:
            raise ConfigError(f"must be > 0 Å; got {self.sigma}", key="atomic_multipoles_smearing_width")
        if any(not w > 0 for w in self.field_feature_widths):
            raise ConfigError(f"widths must be > 0 Å; got {list(self.field_feature_widths)}", key="field_feature_widths")
        n_field_features(len(self.field_feature_widths), self.field_feature_max_l)
        self._norms = None
        if self.field_feature_norms is not None:
            try:
                self._norms = expand_feature_norms(self.field_feature_norms, len(self.field_feature_widths), self.field_feature_max_l)
            except ValueError as err:
                raise ConfigError(str(err), key="field_feature_norms") from None

    @property
    def n_features(self) -> int:
        """Field features per atom: n_widths * (max_l + 1)^2."""
        return n_field_features(len(self.field_feature_widths), self.field_feature_max_l)

    def compute(
        self,
        batch: Dict[str, torch.Tensor],
        multipoles: torch.Tensor,
        energy: bool = True,
        features: bool = True,
        esps: bool = False,
        external: bool = True,
        normalise: bool = True,
    ) -> Dict[str, torch.Tensor]:
        """Energies (n_frames,) eV, features (n_atoms, n_features) and ESPs (n_atoms,) V.

        batch: collated dict with POSITIONS (n_atoms, 3) Å, CELL (n_frames, 3, 3) Å, PBC (n_frames, 3)
        and PTR (n_frames + 1,); optional EXTERNAL_FIELD (n_frames, 3) V/Å and FERMI_LEVEL
        (n_frames,) eV feed the external and Fermi features when ``external``; multipoles:
        (n_atoms, (L+1)^2) [Q, d_y, d_z, d_x]. Returns a dict with "energy", "features", "esps".
        """
        positions, cells, pbcs, ptr = batch[POSITIONS], batch[CELL], batch[PBC], batch[PTR]
        charges, dipoles = split_multipoles(multipoles.to(positions.dtype))
        method = batch_method(self.method, pbcs)
        widths = [float(w) for w in self.field_feature_widths]
        receivers: List[Receiver] = []
        if energy:
            receivers.append(Receiver(float(self.sigma), self.include_self_interaction))
        if features:
            receivers += [Receiver(w, self.include_field_si) for w in widths]
        if esps:
            receivers.append(Receiver(0.0, True))
        energies, feature_blocks, esp_blocks = [], [], []
        for frame in range(cells.shape[0]):  # frames, not atoms: each frame has its own k-set
            lo, hi = int(ptr[frame]), int(ptr[frame + 1])
            handling = resolve_handling(method, pbcs[frame], cells[frame], frame=frame)
            q, p, r = charges[lo:hi], dipoles[lo:hi], positions[lo:hi]
            v, g = frame_fields(r, q, p, cells[frame].to(r.dtype), handling, float(self.sigma), receivers, self.options)
            at = 0
            if energy:
                energies.append(energy_from_fields(q, p, v[0], g[0]))
                at = 1
            if features:
                block = potential_to_features(v[at:at + len(widths)], g[at:at + len(widths)], widths, self.field_feature_max_l)
                if external and EXTERNAL_FIELD in batch:
                    block = block + external_field_features(r, batch[EXTERNAL_FIELD][frame].to(r.dtype), widths, self.field_feature_max_l)
                if external and FERMI_LEVEL in batch:
                    block = block + fermi_level_features(
                        batch[FERMI_LEVEL][frame].to(r.dtype), hi - lo, widths, self.field_feature_max_l, self.fermi_level_offset
                    )
                feature_blocks.append(block)
            if esps:
                esp_blocks.append(v[-1])
        out: Dict[str, torch.Tensor] = {}
        if energy:
            out["energy"] = torch.stack(energies)
        if features:
            feats = torch.cat(feature_blocks, dim=0)
            if normalise and self._norms is not None:
                feats = feats / torch.tensor(self._norms, dtype=feats.dtype, device=feats.device)
            out["features"] = feats
        if esps:
            out["esps"] = torch.cat(esp_blocks)
        return out

    def estimate_average_norms(self, batches: Iterable[Dict[str, torch.Tensor]]) -> List[float]:
        """The "average" ``field_feature_norms`` of spec mace_scf.md §2.4, from training batches.

        RMS per (l, width) of the unnormalised features of the *reference* multipoles plus the
        external-field and centred Fermi-level features, over the atoms of frames that have both
        multipoles and a Fermi level (their label weights > 0). Returns the list l-major,
        width-minor; set it as ``field_feature_norms`` to use it.
        batches: collated dicts with ATOMIC_MULTIPOLES (n_atoms, >= (L+1)^2) and FERMI_LEVEL.
        """
        n_coeffs = 4  # l <= 1 densities: [Q, d_y, d_z, d_x]

        def blocks():
            for batch in batches:
                if ATOMIC_MULTIPOLES not in batch or FERMI_LEVEL not in batch:
                    continue
                frame_ok = torch.ones(batch[CELL].shape[0], dtype=torch.bool)
                for label in (ATOMIC_MULTIPOLES, FERMI_LEVEL):
                    weight = batch.get(weight_key(label))
                    if weight is not None:
                        frame_ok &= weight.reshape(weight.shape[0], -1).amax(1) > 0
                if not bool(frame_ok.any()):
                    continue
                with torch.no_grad():
                    feats = self.compute(batch, batch[ATOMIC_MULTIPOLES][:, :n_coeffs], energy=False, normalise=False)["features"]
                yield feats[frame_ok[batch[BATCH]]]

        try:
            return average_field_feature_norms(blocks(), len(self.field_feature_widths), self.field_feature_max_l)
        except ValueError as err:
            raise ConfigError(str(err), key="field_feature_norms") from None
