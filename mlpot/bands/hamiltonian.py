"""Plane-wave Hamiltonian H(k) of one crystal and its band energies, batched over k-points.

    H_{GG'}(k) = ½|k+G|² δ_{GG'} + Ω⁻¹ Σ_s S_s(G-G') v_s(|G-G'|)  (+ SO + NL, spec §2.3, §2.6-2.7)

Everything that depends only on geometry is built once per system (:class:`PlaneWaveSystem`):
the basis, the distinct |G-G'| values ``q_unique`` and the inverse index ``q_index`` (n_G, n_G)
into them, the structure factors per species, the kinetic diagonals of all k and (when spin-orbit
or nonlocal terms are on, ``cacheSO``) the fixed SO+NL spinor matrices per k. Per evaluation only
v(q) on the ~50-250 distinct q is computed and gathered, the local matrix is built once (it is
k-independent) and only the lowest eigenvalues the fit needs are computed per k
(:mod:`mlpot.bands.eigen`, LAPACK's subset driver, differentiable).

A system can be rebuilt on a uniformly scaled cell with the *same* integer basis
(:meth:`PlaneWaveSystem.deformed`), which is what deformation potentials need (spec §2.10).

Units: Hartree and Bohr inside; band energies returned in eV (``HARTREE_EV`` by default; the
original's 27.2114 with ``compat_units``). Complex dtype follows the real ``dtype``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence

import numpy as np
import torch

from mlpot.bands.basis import plane_wave_basis, reciprocal_lattice
from mlpot.bands.eigen import lowest_eigenpairs, lowest_eigenvalues
from mlpot.bands.inputs import SystemInput
from mlpot.bands.spin_orbit import spin_orbit_nonlocal_matrix
from mlpot.units import DEEPSEUDOPOT_HARTREE_EV, HARTREE_EV

__all__ = ["PlaneWaveSystem", "unique_q_index"]


def unique_q_index(g_vectors: np.ndarray, decimals: int = 9):
    """Distinct |G-G'| values and the inverse index. (n,3) Bohr⁻¹ -> ((n_q,), (n,n) int64)."""
    diff = g_vectors[:, None, :] - g_vectors[None, :, :]
    q = np.linalg.norm(diff, axis=-1)
    # group on rounded values, but keep an exact representative so no rounding enters v(q)
    _, first, inverse = np.unique(np.round(q, decimals), return_index=True, return_inverse=True)
    return q.reshape(-1)[first], inverse.reshape(q.shape)


class PlaneWaveSystem:
    """Geometry cache and Hamiltonian builder for one ``system_X`` bundle.

    Args:
        system: the parsed bundle (cell, atoms, k-points, settings).
        species: global species order (alphabetical); v(q) columns follow it.
        params: (n_species, 9) parameter vectors (SO a5, NL a6/a7 used here).
        basis_mode: "sphere" or "compat" (§2.2).
        spin_orbit, non_local: include the SO / NL terms (spinor Hamiltonian when either is on).
        double_bands: repeat every non-spinor eigenvalue twice (2024 reference files) [COMPAT].
        cache_fixed: keep the fixed SO+NL(+kinetic) spinor matrix of every k (``cacheSO``).
        compat_units: convert Hartree->eV with 27.2114 as the original does [COMPAT].
        miller: (n_G, 3) integer basis to use instead of the cutoff sphere (deformed cells).
        eigen_driver: LAPACK driver of the subset eigensolver ('evr', 'evx', 'evd').
    """

    def __init__(self, system: SystemInput, species: Sequence[str], params: np.ndarray, basis_mode: str = "sphere",
                 spin_orbit: bool = False, non_local: bool = False, double_bands: bool = True,
                 cache_fixed: bool = True, compat_units: bool = False, dtype=torch.float64, device="cpu",
                 miller: Optional[np.ndarray] = None, eigen_driver: str = "evr"):
        self.system = system
        self.species = list(species)
        self.dtype, self.device = dtype, torch.device(device)
        self.cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        self.spinor = bool(spin_orbit or non_local)
        self.spin_orbit, self.non_local = bool(spin_orbit), bool(non_local)
        self.double_bands = bool(double_bands) and not self.spinor
        self.ev = DEEPSEUDOPOT_HARTREE_EV if compat_units else HARTREE_EV
        self.cache_fixed = cache_fixed
        self.basis_mode, self.compat_units, self.eigen_driver = basis_mode, bool(compat_units), eigen_driver
        if miller is None:
            self.g_vectors, self.miller = plane_wave_basis(system.cell, system.max_ke, basis_mode)
        else:
            self.miller = np.asarray(miller)
            self.g_vectors = self.miller @ reciprocal_lattice(system.cell)
        self.n_g = len(self.g_vectors)
        self.volume = float(abs(np.linalg.det(system.cell)))
        self.kpoints = system.kpoints_frac @ reciprocal_lattice(system.cell)  # (n_k, 3) Bohr⁻¹
        self.n_k = len(self.kpoints)
        q_unique, q_index = unique_q_index(self.g_vectors)
        self.q_unique = torch.tensor(q_unique, dtype=dtype, device=self.device)
        self.q_index = torch.from_numpy(q_index).to(self.device)
        present = sorted(set(system.symbols), key=self.species.index)
        self.columns = torch.tensor([self.species.index(s) for s in present], device=self.device)
        diff = self.g_vectors[:, None, :] - self.g_vectors[None, :, :]
        sf = np.stack([
            np.exp(1j * diff @ system.positions[[i for i, s in enumerate(system.symbols) if s == sym]].T).sum(-1)
            for sym in present
        ])  # (n_s_local, n, n), + sign [COMPAT]
        self._sf_numpy = sf
        self.sf_real = torch.tensor(sf.real, dtype=dtype, device=self.device)
        self.sf_imag = torch.tensor(sf.imag, dtype=dtype, device=self.device)
        kg = self.kpoints[:, None, :] + self.g_vectors[None, :, :]
        self.kinetic = torch.tensor(0.5 * (kg**2).sum(-1), dtype=dtype, device=self.device)  # (n_k, n)
        self.params = np.asarray(params, dtype=np.float64)
        self._fixed: dict = {}
        self.order = None if system.order_matrix is None else torch.from_numpy(system.order_matrix).to(self.device)
        self.n_low = self._eigenvalues_needed()

    def _eigenvalues_needed(self) -> int:
        """How many of the lowest eigenvalues the selected bands use (spin doubling, order matrix)."""
        wanted = self.system.n_bands if self.order is None else int(self.order.max()) + 1
        return (wanted + 1) // 2 if self.double_bands else wanted

    def deformed(self, scale: float, k_indices: Optional[Sequence[int]] = None) -> "PlaneWaveSystem":
        """This system on the cell scaled by ``scale`` (positions too), same integer basis and
        fractional k-points (so G, k -> G/scale, k/scale), restricted to ``k_indices``."""
        ks = list(range(self.n_k)) if k_indices is None else [int(k) for k in k_indices]
        system = replace(self.system, cell=self.system.cell * scale, positions=self.system.positions * scale,
                         kpoints_frac=self.system.kpoints_frac[ks], kweights=self.system.kweights[ks],
                         ref_bands=None, kdist=None, order_matrix=None)
        return PlaneWaveSystem(system, self.species, self.params, self.basis_mode, self.spin_orbit, self.non_local,
                               self.double_bands, self.cache_fixed, self.compat_units, self.dtype, self.device,
                               miller=self.miller, eigen_driver=self.eigen_driver)

    # ----------------------------------------------------------------- parameters of fixed terms
    def set_params(self, params: np.ndarray) -> None:
        """Replace the parameter vectors; drops cached SO/NL matrices when a5..a7 change."""
        params = np.asarray(params, dtype=np.float64)
        if self.spinor and not np.array_equal(params[:, 5:8], self.params[:, 5:8]):
            self._fixed.clear()
        self.params = params

    def _local_params(self) -> np.ndarray:
        return self.params[self.columns.cpu().numpy()]

    def fixed_matrix(self, k: int) -> torch.Tensor:
        """Kinetic + SO + NL spinor matrix at k-point ``k``: (2n, 2n) complex, Hartree."""
        if k in self._fixed:
            return self._fixed[k]
        kg = self.kpoints[k][None, :] + self.g_vectors
        fixed = spin_orbit_nonlocal_matrix(kg, self._sf_numpy, self._local_params(), self.volume,
                                           self.spin_orbit, self.non_local).to(self.cdtype).to(self.device)
        fixed.diagonal().add_(self.kinetic[k].repeat(2).to(self.cdtype))
        if self.cache_fixed:
            self._fixed[k] = fixed
        return fixed

    # ----------------------------------------------------------------- Hamiltonian and bands
    def local_potential(self, form_factors: torch.Tensor) -> torch.Tensor:
        """Ω⁻¹ Σ_s S_s(G-G') v_s(|G-G'|): (n_q, n_species) Ha·Bohr³ on ``q_unique`` -> (n, n) complex Ha."""
        gathered = form_factors[:, self.columns].T[:, self.q_index]  # (n_s_local, n, n)
        real = (self.sf_real * gathered).sum(0) / self.volume
        imag = (self.sf_imag * gathered).sum(0) / self.volume
        return torch.complex(real, imag)

    def hamiltonians(self, local: torch.Tensor, k_indices: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Stack of H(k) for ``k_indices`` (default all): (n_chunk, dim, dim) complex Ha."""
        ks = list(range(self.n_k)) if k_indices is None else [int(k) for k in k_indices]
        if not self.spinor:
            return local.unsqueeze(0) + torch.diag_embed(self.kinetic[ks].to(self.cdtype))
        fixed = torch.stack([self.fixed_matrix(k) for k in ks])
        return torch.block_diag(local, local).unsqueeze(0) + fixed

    def band_energies(self, local: torch.Tensor, k_indices: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Band energies in eV: (n_chunk, nBands), spin-doubled / reordered as configured."""
        ks = list(range(self.n_k)) if k_indices is None else [int(k) for k in k_indices]
        energies = lowest_eigenvalues(self.hamiltonians(local, ks), self.n_low, self.eigen_driver) * self.ev
        return self.select_bands(energies, ks)

    @torch.no_grad()
    def eigenvectors(self, local: torch.Tensor, k_indices: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Eigenvectors of the lowest ``n_low`` levels: (n_chunk, dim, n_low) complex (no gradient)."""
        return lowest_eigenpairs(self.hamiltonians(local, k_indices), self.n_low, self.eigen_driver)[1]

    def select_bands(self, energies: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
        """Spin doubling, order-matrix permutation and truncation to nBands of sorted eigenvalues."""
        if self.double_bands:
            energies = energies.repeat_interleave(2, dim=-1)
        n_bands = self.system.n_bands
        if self.order is not None:
            return torch.gather(energies, 1, self.order[list(ks), :n_bands])
        return energies[:, :n_bands]
