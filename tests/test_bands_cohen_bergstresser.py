"""Independent ground truth: Cohen-Bergstresser (1966) form factors in the plane-wave Hamiltonian
(spec deepseudopot.md §8): a shell-tabulated local potential must reproduce the EPM band table."""

import numpy as np
import pytest
import torch

from mlpot.bands.hamiltonian import PlaneWaveSystem
from mlpot.bands.inputs import SystemInput
from mlpot.units import BOHR_ANGSTROM

# a (Å); V_S3, V_S8, V_S11, V_A3, V_A4, V_A11 (Ry)
CB = {"Si": (5.43, -0.21, 0.04, 0.08, 0.0, 0.0, 0.0), "GaAs": (5.64, -0.23, 0.01, 0.06, 0.07, 0.05, 0.01)}
# spec §8 table, eV relative to the valence maximum at Γ (no SO, |G|² <= 21 (2π/a)², 113 PWs)
EXPECTED = {
    "Si": {"G": [-12.64, 0, 0, 0, 3.42, 3.42, 3.42, 3.88], "X": [-8.35, -8.32, -3.00, -3.00, 0.95, 0.95],
           "L": [-10.25, -7.37, -1.25, -1.25, 1.88, 3.99, 3.99]},
    "GaAs": {"G": [-12.26, 0, 0, 0, 1.42, 4.43, 4.43, 4.43], "X": [-10.18, -6.13, -2.27, -2.27, 1.74, 2.03],
             "L": [-10.79, -6.01, -0.91, -0.91, 1.66, 4.95, 4.95]},
}


@pytest.mark.parametrize("material", ["Si", "GaAs"])
def test_cohen_bergstresser_bands(material):
    a_ang, vs3, vs8, vs11, va3, va4, va11 = CB[material]
    a = a_ang / BOHR_ANGSTROM
    cell = a * 0.5 * (np.ones((3, 3)) - np.eye(3))
    tau = a / 8.0 * np.ones(3)
    unit = 2 * np.pi / a
    kcart = unit * np.array([[0, 0, 0], [1, 0, 0], [0.5, 0.5, 0.5]])
    kfrac = kcart @ cell.T / (2 * np.pi)
    system = SystemInput(0, cell, ["A", "B"], np.stack([tau, -tau]), {"maxKE": 10.5 * unit**2 * (1 + 1e-9), "nBands": 8},
                         kfrac, np.ones(3))
    pw = PlaneWaveSystem(system, ["A", "B"], np.zeros((2, 9)), basis_mode="sphere", double_bands=False)
    assert pw.n_g == 113
    shell = np.rint((pw.q_unique.numpy() / unit) ** 2).astype(int)
    v_sym = np.select([shell == 3, shell == 8, shell == 11], [vs3, vs8, vs11], 0.0)
    v_anti = np.select([shell == 3, shell == 4, shell == 11], [va3, va4, va11], 0.0)
    # per-atom form factors (Ω/2)(V_S ± V_A), Ry -> Ha
    form = 0.5 * pw.volume / 2 * np.stack([v_sym + v_anti, v_sym - v_anti], axis=1)
    local = pw.local_potential(torch.tensor(form))
    bands = pw.band_energies(local).numpy()
    bands = bands - bands[0, 3]
    for row, point in enumerate("GXL"):
        expected = EXPECTED[material][point]
        np.testing.assert_allclose(bands[row, : len(expected)], expected, atol=0.006, err_msg=f"{material} {point}")
