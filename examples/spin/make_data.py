"""A NiO-like spin-lattice dataset in the deepmd/npy spin layout, from a classical model.

Usage: ``python examples/spin/make_data.py OUT_DIR [--frames 40] [--seed 0] [--repeat 2 1 1]``
writes ``OUT_DIR/type.raw``, ``type_map.raw`` (Ni O) and ``set.000/{coord,box,energy,force,virial,
spin,force_mag}.npy`` (DeePMD-kit 3.x spin data: ``spin.npy`` and ``force_mag.npy`` are
nframes x natoms*3, zero on O). ``python examples/spin/make_data.py --check`` compares the
autograd derivatives with central finite differences.

Structure: rock salt, a0 = 4.17 Å, in the rhombohedral cell of the type-II antiferromagnet
(a1 = a0 (1, 1/2, 1/2), a2 = a0 (1/2, 1, 1/2), a3 = a0 (1/2, 1/2, 1): two Ni with opposite spins,
two O), repeated ``--repeat`` times; each frame strains the cell (±2 %), displaces the atoms
(σ = 0.06 Å), turns the AFM axis to a random direction, cants every Ni spin by up to 35° and draws
its length in 1.7 ± 0.1 μB. O carries no spin.

Energy (eV; r in Å, s in μB), every pair term times the cutoff f_c(r) = 1 below 4.6 Å, a cosine
taper to 0 at R_C = 5.2 Å; all periodic images are summed:

* Ni-O Morse D [e^{-2α(r - r0)} - 2 e^{-α(r - r0)}], D = 1.2 eV, α = 1.6 /Å, r0 = 2.085 Å;
* Born-Mayer repulsion A e^{-r/ρ}, ρ = 0.3 Å: A = 300 eV (Ni-Ni), 500 eV (O-O);
* Heisenberg exchange between Ni: J(r) s_i·s_j with J(r) = J1 e^{-((r - d1)/w)^2} +
  J2 e^{-((r - d2)/w)^2}, J1 = -2 meV/μB² (ferromagnetic, d1 = a0/√2), J2 = +20 meV/μB²
  (antiferromagnetic 180° superexchange, d2 = a0), w = 0.35 Å: its r dependence gives
  magnetostrictive forces;
* single-ion longitudinal (Landau) term on Ni: B (|s_i|² - m0²)², B = 0.05 eV/μB⁴, m0 = 1.7 μB.

Forces F = -dE/dr, magnetic forces F_m = -dE/ds (eV/μB) and the virial Ξ = -dE/dε^T (a general
strain ε of positions and cell, spins unchanged: Ξ = -Σ_k r_k ⊗ dE/dr_k, not symmetric, as
DeePMD-kit's spin models define it) are exact derivatives (torch autograd, float64).
"""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path

import numpy as np
import torch

A0 = 4.17
R_IN, R_C = 4.6, 5.2
MORSE = (1.2, 1.6, 2.085)
BORN_MAYER = {(0, 0): 300.0, (1, 1): 500.0}
RHO = 0.3
J1, J2, WIDTH = -0.002, 0.020, 0.35
B_LANDAU, M0 = 0.05, 1.7
TYPE_MAP = ["Ni", "O"]


def _cutoff(r: torch.Tensor) -> torch.Tensor:
    x = ((r - R_IN) / (R_C - R_IN)).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * x))


def energy(positions: torch.Tensor, cell: torch.Tensor, types: torch.Tensor, spin: torch.Tensor) -> torch.Tensor:
    """Total energy (eV) of one frame: positions (n, 3) Å, cell (3, 3) Å rows, types (n,) (0 Ni, 1 O),
    spin (n, 3) μB. All pairs i, j and images n with 0 < |r_j + n·cell - r_i| < R_C, each pair counted once."""
    reach = [int(math.ceil(R_C / (abs(torch.linalg.det(cell)).item() / torch.linalg.norm(
        torch.linalg.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])).item()))) + 1 for k in range(3)]
    shifts = torch.tensor(list(itertools.product(*[range(-m, m + 1) for m in reach])), dtype=positions.dtype)
    images = shifts @ cell  # (n_images, 3)
    vectors = positions[None, :, None, :] + images[None, None] - positions[:, None, None, :]  # (i, j, image, 3)
    n = positions.shape[0]
    self_pair = (torch.arange(n)[:, None, None] == torch.arange(n)[None, :, None]) & (shifts.abs().sum(1) == 0)[None, None]
    safe = torch.where(self_pair[..., None], torch.ones_like(vectors), vectors)
    r = safe.norm(dim=-1)
    inside = (~self_pair) & (r < R_C)
    fc = torch.where(inside, _cutoff(r), torch.zeros_like(r))
    ti, tj = types[:, None, None].expand_as(r), types[None, :, None].expand_as(r)
    depth, alpha, r0 = MORSE
    morse = depth * (torch.exp(-2 * alpha * (r - r0)) - 2 * torch.exp(-alpha * (r - r0)))
    pair = torch.where(ti != tj, morse, torch.zeros_like(r))
    for (a, b), prefactor in BORN_MAYER.items():
        pair = pair + torch.where((ti == a) & (tj == b), prefactor * torch.exp(-r / RHO), torch.zeros_like(r))
    exchange_j = J1 * torch.exp(-((r - A0 / math.sqrt(2)) / WIDTH) ** 2) + J2 * torch.exp(-((r - A0) / WIDTH) ** 2)
    both_ni = (ti == 0) & (tj == 0)
    dots = (spin[:, None, :] * spin[None, :, :]).sum(-1)[..., None].expand_as(r)
    exchange = torch.where(both_ni, exchange_j * dots, torch.zeros_like(r))
    pairs = 0.5 * (fc * (pair + exchange)).sum()  # every pair appears as (i, j, n) and (j, i, -n)
    norm_sq = (spin * spin).sum(-1)
    landau = torch.where(types == 0, B_LANDAU * (norm_sq - M0 ** 2) ** 2, torch.zeros_like(norm_sq)).sum()
    return pairs + landau


def labels(positions, cell, types, spin):
    """(energy eV, forces (n, 3) eV/Å, magnetic forces (n, 3) eV/μB, virial (3, 3) eV) of one frame."""
    positions = torch.as_tensor(positions, dtype=torch.float64).requires_grad_(True)
    spin = torch.as_tensor(spin, dtype=torch.float64).requires_grad_(True)
    cell = torch.as_tensor(cell, dtype=torch.float64)
    strain = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    value = energy(positions + positions @ strain, cell + cell @ strain, torch.as_tensor(types), spin)
    d_pos, d_spin, d_strain = torch.autograd.grad(value, (positions, spin, strain))
    return value.item(), -d_pos.numpy(), -d_spin.numpy(), -d_strain.T.numpy()


def structure(repeat=(2, 1, 1)):
    """(positions (n, 3) Å, cell (3, 3) Å, types (n,), AFM sign (n,): +1/-1 on Ni, 0 on O) of the ideal crystal."""
    base = A0 * np.array([[1.0, 0.5, 0.5], [0.5, 1.0, 0.5], [0.5, 0.5, 1.0]])
    sites = [(np.zeros(3), 0, 1.0), (A0 * np.ones(3), 0, -1.0),
             (np.array([A0 / 2, 0, 0]), 1, 0.0), (A0 * np.ones(3) + np.array([A0 / 2, 0, 0]), 1, 0.0)]
    positions, types, signs = [], [], []
    for cell_index in itertools.product(*[range(m) for m in repeat]):
        offset = np.array(cell_index, dtype=float) @ base
        for position, kind, sign in sites:
            positions.append(position + offset)
            types.append(kind)
            signs.append(sign)
    return np.array(positions), base * np.array(repeat, dtype=float)[:, None], np.array(types), np.array(signs)


def _random_unit(rng, n):
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def frame(rng, repeat=(2, 1, 1)):
    """One random frame: (positions, cell, types, spin) (see the module docstring)."""
    positions, cell, types, signs = structure(repeat)
    strain = rng.uniform(-0.02, 0.02, size=(3, 3))
    strain = 0.5 * (strain + strain.T)
    cell = cell @ (np.eye(3) + strain)
    positions = positions @ (np.eye(3) + strain) + rng.normal(scale=0.06, size=positions.shape)
    axis = _random_unit(rng, 1)[0]
    n = len(types)
    tilt = _random_unit(rng, n)
    tilt -= (tilt @ axis)[:, None] * axis  # a direction perpendicular to the axis
    tilt /= np.linalg.norm(tilt, axis=1, keepdims=True)
    angle = rng.uniform(0.0, math.radians(35.0), size=n)
    directions = np.cos(angle)[:, None] * axis + np.sin(angle)[:, None] * tilt
    length = rng.uniform(M0 - 0.1, M0 + 0.1, size=n)
    spin = (signs * length)[:, None] * directions
    return positions, cell, types, spin


def write(out_dir, n_frames: int = 40, seed: int = 0, repeat=(2, 1, 1)) -> Path:
    """Write ``n_frames`` labelled frames as a deepmd/npy spin system in ``out_dir``; returns it."""
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    columns = {name: [] for name in ("coord", "box", "energy", "force", "virial", "spin", "force_mag")}
    types = None
    for _ in range(n_frames):
        positions, cell, types, spin = frame(rng, repeat)
        value, force, force_mag, virial = labels(positions, cell, types, spin)
        for name, data in (("coord", positions), ("box", cell), ("energy", value), ("force", force),
                           ("virial", virial), ("spin", spin), ("force_mag", force_mag)):
            columns[name].append(np.asarray(data, dtype=np.float64).reshape(-1))
    (out / "set.000").mkdir(parents=True, exist_ok=True)
    np.savetxt(out / "type.raw", types, fmt="%d")
    (out / "type_map.raw").write_text("\n".join(TYPE_MAP) + "\n")
    for name, rows in columns.items():
        array = np.array(rows)
        np.save(out / "set.000" / f"{name}.npy", array[:, 0] if name == "energy" else array)
    return out


def check(seed: int = 1, delta: float = 1e-5) -> float:
    """Largest |autograd - central difference| over forces, magnetic forces and virial of one frame."""
    rng = np.random.default_rng(seed)
    positions, cell, types, spin = frame(rng)
    _, force, force_mag, virial = labels(positions, cell, types, spin)
    t = torch.as_tensor(types)

    def e(p, c, s):
        return energy(torch.as_tensor(p), torch.as_tensor(c), t, torch.as_tensor(s)).item()

    worst = 0.0
    for array, analytic, which in ((positions, force, 0), (spin, force_mag, 2)):
        for index in np.ndindex(array.shape):
            plus, minus = array.copy(), array.copy()
            plus[index] += delta
            minus[index] -= delta
            args_p = [positions, cell, spin]
            args_m = [positions, cell, spin]
            args_p[which], args_m[which] = plus, minus
            fd = -(e(*args_p) - e(*args_m)) / (2 * delta)
            worst = max(worst, abs(fd - analytic[index]))
    for a, b in itertools.product(range(3), range(3)):
        eps = np.zeros((3, 3))
        eps[a, b] = delta
        fd = -(e(positions @ (np.eye(3) + eps), cell @ (np.eye(3) + eps), spin)
               - e(positions @ (np.eye(3) - eps), cell @ (np.eye(3) - eps), spin)) / (2 * delta)
        worst = max(worst, abs(fd - virial[b, a]))  # -dE/dε_ab = Ξ_ba
    return worst


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, nargs=3, default=(2, 1, 1))
    parser.add_argument("--check", action="store_true", help="finite-difference check of the derivatives")
    args = parser.parse_args(argv)
    if args.check:
        print(f"max |autograd - finite difference| = {check():.3e}")
        return
    if not args.out_dir:
        parser.error("OUT_DIR is required (or --check)")
    print(write(args.out_dir, args.frames, args.seed, tuple(args.repeat)))


if __name__ == "__main__":
    main()
