"""Write a DeePseudopot inputs folder for Si and GaAs with the Cohen-Bergstresser (1966) potentials.

    python examples/bands/make_cohen_bergstresser.py OUT_DIR [--prefit-epochs N]

M. L. Cohen & T. K. Bergstresser, Phys. Rev. 141, 789 (1966): V(G) = V_S(|G|²) cos(G·τ) +
i V_A(|G|²) sin(G·τ), atoms at ±τ = ±(a/8)(1,1,1), non-zero only on the shells |G|² = 3, 4, 8, 11
(2π/a)², in Rydberg. Per atom this is v_{1,2}(|G|) = (Ω/2)(V_S ± V_A) (×½ for Ry -> Ha), Ha·Bohr³.

The folder has two systems (system_0 Si, system_1 GaAs), no parameter files, and the form factors
tabulated in ``init_qSpace_pot.par``: smooth curves through the shell values (and through zero on the
higher shells where the structure factor does not vanish), on a 0.02 Bohr⁻¹ grid that also holds
every shell q exactly (so interpolating the table gives the shell values). The reference bands
(``expBandStruct_X.par``, 61 k-points L-Γ-X-K-Γ, 16 spin-doubled columns, relative to the Γ valence
maximum with ``relE_bIdx = 7``) come from an independent plain-NumPy EPM written here, in CB's own
units (Rydberg, |k+G|²), on the classic 113-plane-wave basis |G|² <= 21 (2π/a)².

``NN_config.par`` asks for a network (Net_celu_HeInit_decayGaussian, 32-32-32) pre-fitted to the table
for ``--prefit-epochs`` epochs (default 2000) with the Hamiltonians' own q values weighted 100
(``init_Zunger_focus_weight``, an mlpot key), and no gradient training: ``mlpot bands fit`` then writes
the table's bands (``oldFunc_*``) and the pre-fitted network's (``initZunger_*``).

Published values the band structures must show (spec deepseudopot.md §8, eV from the Γ valence
maximum): Si Γ15c 3.42, X1c 0.95, L1c 1.88; GaAs direct gap 1.42.
"""

import argparse
import itertools
from pathlib import Path

import numpy as np
from scipy.interpolate import PchipInterpolator

BOHR_ANGSTROM = 0.529177210903
RYDBERG_EV = 13.605693122994
# a (Å); V_S3, V_S8, V_S11, V_A3, V_A4, V_A11 (Ry); species at +τ and -τ
MATERIALS = {
    "Si": (5.43, (-0.21, 0.04, 0.08), (0.0, 0.0, 0.0), ("Si", "Si")),
    "GaAs": (5.64, (-0.23, 0.01, 0.06), (0.07, 0.05, 0.01), ("Ga", "As")),
}
SHELLS_SYM, SHELLS_ANTI = (3, 8, 11), (3, 4, 11)
PUBLISHED = {"Si": {"G15c": 3.42, "X1c": 0.95, "L1c": 1.88}, "GaAs": {"gap": 1.42}}
N_SEGMENT = 20  # k-points per path segment


def form_factors_ry(material: str):
    """{|G|² (2π/a)² units: (V_S, V_A)} in Ry on the CB shells."""
    _, vs, va, _ = MATERIALS[material]
    table = {n: [0.0, 0.0] for n in (3, 4, 8, 11)}
    for n, v in zip(SHELLS_SYM, vs):
        table[n][0] = v
    for n, v in zip(SHELLS_ANTI, va):
        table[n][1] = v
    return table


def cell_and_tau(material: str):
    a = MATERIALS[material][0] / BOHR_ANGSTROM  # Bohr
    return a, a * 0.5 * (np.ones((3, 3)) - np.eye(3)), a / 8.0 * np.ones(3)


def k_path() -> np.ndarray:
    """Fractional (reciprocal basis) k-points L -> Γ -> X -> (X' ->) K -> Γ, 61 points."""
    L, G, X = np.array([0.5, 0.5, 0.5]), np.zeros(3), np.array([0.5, 0.0, 0.5])
    X2, K = np.array([0.5, 0.5, 1.0]), np.array([0.375, 0.375, 0.75])
    t = np.linspace(0, 1, N_SEGMENT + 1)[:, None]
    legs = [L + t * (G - L), (G + t * (X - G))[1:], (X2 + np.linspace(0, 1, N_SEGMENT // 4 + 1)[1:, None] * (K - X2)),
            (K + np.linspace(0, 1, N_SEGMENT - N_SEGMENT // 4 + 1)[1:, None] * (G - K))]
    return np.concatenate(legs)


def reference_bands(material: str, kfrac: np.ndarray, n_bands: int = 8) -> np.ndarray:
    """Independent EPM in Rydberg: H = |k+G|² δ + V_S cos(ΔG·τ) + i V_A sin(ΔG·τ); eV from the Γ VBM."""
    a, cell, tau = cell_and_tau(material)
    recip = 2 * np.pi * np.linalg.inv(cell).T
    unit = 2 * np.pi / a
    n = np.array(list(itertools.product(range(-4, 5), repeat=3)))
    g = n @ recip
    g = g[np.sum((g / unit) ** 2, axis=1) <= 21 + 1e-6]
    diff = g[:, None, :] - g[None, :, :]
    shell = np.rint(np.sum((diff / unit) ** 2, axis=-1)).astype(int)
    v = np.zeros(shell.shape, dtype=complex)
    for s, (vs, va) in form_factors_ry(material).items():
        phase = diff @ tau
        v += np.where(shell == s, vs * np.cos(phase) + 1j * va * np.sin(phase), 0.0)
    bands = []
    for k in kfrac @ recip:
        h = v + np.diag(np.sum((k + g) ** 2, axis=1))
        bands.append(np.linalg.eigvalsh(h)[:n_bands])
    bands = np.array(bands) * RYDBERG_EV
    gamma = int(np.argmin(np.linalg.norm(kfrac, axis=1)))
    return bands - bands[gamma, 3]


def shell_phases(material: str, max_shell: int = 60) -> dict:
    """{|G|²: (any cos(G·τ) != 0, any sin(G·τ) != 0)} over the reciprocal vectors of each shell."""
    a, cell, tau = cell_and_tau(material)
    recip = 2 * np.pi * np.linalg.inv(cell).T
    g = np.array(list(itertools.product(range(-8, 9), repeat=3))) @ recip
    shell = np.rint(np.sum((g / (2 * np.pi / a)) ** 2, axis=1)).astype(int)
    out = {}
    for s in np.unique(shell[(shell > 0) & (shell <= max_shell)]):
        phase = g[shell == s] @ tau
        out[int(s)] = (bool(np.any(np.abs(np.cos(phase)) > 1e-9)), bool(np.any(np.abs(np.sin(phase)) > 1e-9)))
    return out


def tabulated_potentials(q_grid: np.ndarray) -> dict:
    """{species: v(q) on q_grid} in Ha·Bohr³, v_{1,2} = (Ω/2)(V_S ± V_A)/2.

    V_S and V_A are smooth monotone cubics (PCHIP) through the CB values and through zero on every
    higher shell where the structure factor lets them act (cos(G·τ) != 0 for V_S, sin(G·τ) != 0 for
    V_A). Where it does not (Si |G|² = 4, 12; V_A on |G|² = 8 ...) the value is free and no knot is
    set, which keeps the curves smooth; at q = 0 (a uniform shift) V_S = 1.5 V_S3 and V_A = V_A3.
    """
    out = {}
    for material, (_, _, _, (plus, minus)) in MATERIALS.items():
        a, cell, _ = cell_and_tau(material)
        omega, unit = abs(np.linalg.det(cell)), 2 * np.pi / a
        ff, phases = form_factors_ry(material), shell_phases(material)
        curves = []
        for column, acts in ((0, 0), (1, 1)):
            knots = {0: (1.5 if column == 0 else 1.0) * ff[3][column]}
            for s, active in phases.items():
                if active[acts]:
                    knots[s] = ff[s][column] if s in ff else 0.0
            qs = np.sqrt(np.array(sorted(knots), dtype=float)) * unit
            curve = PchipInterpolator(qs, [knots[s] for s in sorted(knots)])
            curves.append(np.where(q_grid <= qs[-1], curve(np.minimum(q_grid, qs[-1])), 0.0))
        v_sym, v_anti = curves
        out[plus] = 0.5 * omega / 2 * (v_sym + v_anti)
        out[minus] = 0.5 * omega / 2 * (v_sym - v_anti)
    return out


def shell_q_values() -> np.ndarray:
    qs = []
    for material in MATERIALS:
        a = cell_and_tau(material)[0]
        qs += [np.sqrt(s) * 2 * np.pi / a for s in range(0, 200)]
    return np.array(qs)


NN_CONFIG = """# Cohen-Bergstresser Si + GaAs, tabulated form factors (examples/bands/make_cohen_bergstresser.py)
PPmodel = Net_celu_HeInit_decayGaussian
PPmodel_gaussian_std = 1.5
hiddenLayers = 32 32 32
nSystem = 2
SHOWPLOTS = 0
init_Zunger_num_epochs = {epochs}
init_Zunger_plotEvery = 200
init_Zunger_optimizer_lr = 0.01
init_Zunger_scheduler_gamma = 0.9
init_Zunger_focus_weight = 100
"""


def write_folder(out: Path, prefit_epochs: int = 2000) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kfrac = k_path()
    for index, material in enumerate(MATERIALS):
        a, cell, tau = cell_and_tau(material)
        plus, minus = MATERIALS[material][3]
        (out / f"system_{index}.par").write_text(
            f"scale = {a:.12f}\ncell\n" + "".join(" ".join(f"{x:.1f}" for x in row) + "\n" for row in cell / a)
            + f"atoms\n{plus} 0.125 0.125 0.125\n{minus} -0.125 -0.125 -0.125\n")
        unit = 2 * np.pi / a
        max_ke = 0.5 * 21.5 * unit**2  # Hartree; |G|² <= 21 (2π/a)², next shell is 24
        (out / f"input_{index}.par").write_text(f"maxKE = {max_ke:.10f}\nnBands = 16\nrelE_bIdx = 7\n"
                                                f"systemName = {material}\nidxVB = 7\nidxCB = 8\nidxGap = 20\n")
        np.savetxt(out / f"kpoints_{index}.par", np.column_stack([kfrac, np.ones(len(kfrac))]), fmt="%.12f")
        bands = np.repeat(reference_bands(material, kfrac), 2, axis=1)
        recip = 2 * np.pi * np.linalg.inv(cell).T
        kdist = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(kfrac @ recip, axis=0), axis=1))])
        np.savetxt(out / f"expBandStruct_{index}.par", np.column_stack([kdist, bands]), fmt="%.8f")
        np.savetxt(out / f"bandWeights_{index}.par", np.ones(16), fmt="%g")
    q = np.union1d(np.round(np.arange(0.0, 8.0 + 1e-9, 0.02), 12), np.round(shell_q_values(), 12))
    q = q[q <= 8.0]
    pots = tabulated_potentials(q)
    species = sorted(pots)
    np.savetxt(out / "init_qSpace_pot.par", np.column_stack([q] + [pots[s] for s in species]), fmt="%.12f",
               header="q " + " ".join(f"v(q)_{s}" for s in species))
    (out / "NN_config.par").write_text(NN_CONFIG.format(epochs=prefit_epochs))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--prefit-epochs", type=int, default=2000)
    args = parser.parse_args()
    print(f"wrote {write_folder(args.out, args.prefit_epochs)}")
