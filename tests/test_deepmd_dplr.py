"""DPLR (DeePMD-kit ``model/modifier`` type ``dipole_charge``): the reciprocal Ewald energy of ions +
Wannier centroids against DeePMD-kit's formula and the Madelung constant, forces through the DW
model, virial, the external field, neutrality and the input keys."""

import math

import numpy as np
import pytest
import torch

from mlpot.data import keys as K
from mlpot.electrostatics import coulomb_energy, gaussian_charge_reciprocal_potentials, half_space_miller_kvectors
from mlpot.errors import CheckpointError, ConfigError, DataError
from mlpot.models import build_model
from mlpot.models.compose import FROZEN_FORMAT
from mlpot.models.deepmd.dplr import DipoleChargeLongRange, deepmd_ewald_grid
from mlpot.models.derivatives import compute_derivatives
from mlpot.testing import assert_forces_match_fd, assert_virial_matches_finite_strain, random_batch
from mlpot.units import COULOMB_CONSTANT

F64 = torch.float64
DESCRIPTOR = {"type": "se_e2_a", "rcut": 3.5, "rcut_smth": 0.5, "sel": [24, 48], "neuron": [4, 8], "axis_neuron": 4, "seed": 1}


def deepmd_reciprocal_energy(positions, charges, cell, beta, spacing):
    """DeePMD-kit's ewald_recp energy written out: k_e/(2 pi V) sum over the full Miller box
    |m_a| <= K_a/2, m != 0, of exp(-pi^2 m^2/beta^2)/m^2 |S(m)|^2 (numpy, float64)."""
    cell = np.asarray(cell, dtype=np.float64)
    sizes = []
    for length in np.linalg.norm(cell, axis=1):
        k = int(math.ceil(length / spacing - 1e-12))
        sizes.append(k + k % 2)
    grids = np.meshgrid(*[np.arange(-k // 2, k // 2 + 1) for k in sizes], indexing="ij")
    miller = np.stack([g.ravel() for g in grids], 1)
    miller = miller[np.any(miller != 0, axis=1)]
    m = miller @ np.linalg.inv(cell).T  # rows: m = n . rec_box (no 2 pi)
    m2 = (m * m).sum(1)
    phase = 2 * np.pi * m @ np.asarray(positions, dtype=np.float64).T
    s_re = (np.cos(phase) * charges).sum(1)
    s_im = (np.sin(phase) * charges).sum(1)
    total = (np.exp(-np.pi**2 * m2 / beta**2) / m2 * (s_re**2 + s_im**2)).sum()
    return COULOMB_CONSTANT * total / (2 * np.pi * abs(np.linalg.det(cell)))


def reciprocal_energy(positions, charges, cell, beta, spacing):
    kvectors = half_space_miller_kvectors(cell, [k // 2 for k in deepmd_ewald_grid(cell, spacing)])
    return 0.5 * (charges * gaussian_charge_reciprocal_potentials(positions, charges, cell, kvectors, beta)).sum()


def test_reciprocal_energy_is_deepmd_formula_and_gaussian_charge_energy():
    g = torch.Generator().manual_seed(2)
    cell = torch.tensor([[7.0, 0.0, 0.0], [0.8, 6.5, 0.0], [-0.4, 0.6, 7.5]], dtype=F64)
    positions = torch.rand(10, 3, generator=g, dtype=F64) @ cell
    charges = torch.randn(10, generator=g, dtype=F64)
    charges = charges - charges.mean()
    energy = reciprocal_energy(positions, charges, cell, 0.4, 1.0)
    reference = deepmd_reciprocal_energy(positions.numpy(), charges.numpy(), cell.numpy(), 0.4, 1.0)
    assert float(energy) == pytest.approx(reference, rel=1e-12)
    # the same sum is the full periodic energy of Gaussian charges of width 1/(2 beta), self-energy included,
    # as the core's Ewald split (real + reciprocal) computes it: pins the kernel and its units
    gaussian = coulomb_energy(positions, charges[:, None], 1.0 / (2 * 0.4), cell, (True,) * 3, "pbc")
    assert float(energy) == pytest.approx(float(gaussian), rel=1e-7)


def test_reciprocal_plus_real_space_sum_gives_rocksalt_madelung_constant():
    a, beta = 5.64, 0.9
    fcc = torch.tensor([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]], dtype=F64)
    positions = torch.cat([fcc, fcc + torch.tensor([0.5, 0, 0], dtype=F64)]) * a
    charges = torch.tensor([1.0] * 4 + [-1.0] * 4, dtype=F64)
    cell = torch.eye(3, dtype=F64) * a
    recip = reciprocal_energy(positions, charges, cell, beta, 0.25)
    shifts = torch.cartesian_prod(*[torch.arange(-3, 4, dtype=F64)] * 3) @ cell
    d = (positions[None, :, None] - positions[:, None, None] + shifts[None, None]).norm(dim=-1)  # (i, j, shift)
    pair = torch.where(d > 1e-9, torch.erfc(beta * d) / d.clamp_min(1e-9), torch.zeros_like(d))
    real = 0.5 * COULOMB_CONSTANT * (charges[:, None, None] * charges[None, :, None] * pair).sum()
    self_energy = COULOMB_CONSTANT * beta / math.sqrt(math.pi) * (charges**2).sum()
    madelung = -float(recip + real - self_energy) / 4 / COULOMB_CONSTANT * (a / 2)
    assert madelung == pytest.approx(1.747565, abs=1e-6)


# ---- the DPLR model ----------------------------------------------------------------------------


def write_dipole_model(path, seed=1):
    """A small untrained DW model (se_e2_a + dipole fitting on type 0), frozen as `mlpot freeze` writes it."""
    torch.manual_seed(seed)
    section = {"type_map": ["O", "H"], "descriptor": dict(DESCRIPTOR),
               "fitting_net": {"type": "dipole", "sel_type": [0], "neuron": [8], "seed": seed}}
    model = build_model(section, F64)
    torch.save({"format": FROZEN_FORMAT, "format_version": 1, "model_config": model.config, "dtype": "float64",
                "state_dict": {k: v.detach() for k, v in model.state_dict().items()}, "metadata": {}}, path)
    return model


def dplr_section(dw_file, **modifier):
    return {"type_map": ["O", "H"], "descriptor": dict(DESCRIPTOR), "fitting_net": {"neuron": [8], "seed": 2},
            "modifier": {"type": "dipole_charge", "model_name": str(dw_file), "model_charge_map": [-8],
                         "sys_charge_map": [6, 1], "ewald_h": 1.0, "ewald_beta": 0.4, **modifier}}


def water_like_batch(n_frames=2):
    """Random 9-atom frames typed O H H x 3 (neutral with charges 6, 1 and a -8 WC on O)."""
    batch = random_batch(n_frames=n_frames, n_atoms=9, n_types=2, cutoff=3.5, box=5.0, seed=3)
    batch[K.ATOM_TYPES] = torch.tensor([0, 1, 1] * 3 * n_frames)
    return batch


@pytest.fixture(scope="module")
def dw_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dplr") / "dw.pth"
    write_dipole_model(path)
    return path


def test_long_range_energy_is_the_ewald_energy_of_ions_and_predicted_wannier_centroids(dw_file):
    model = build_model(dplr_section(dw_file), F64)
    long_range = model.members[1]
    assert isinstance(long_range, DipoleChargeLongRange)
    batch = water_like_batch()
    out = model(batch)
    lr = long_range(batch)
    dipoles = long_range.dipole_model(batch)[K.ATOMIC_DIPOLE].detach()
    for f in range(2):
        lo, hi = int(batch[K.PTR][f]), int(batch[K.PTR][f + 1])
        r, t = batch[K.POSITIONS][lo:hi], batch[K.ATOM_TYPES][lo:hi]
        oxygens = torch.nonzero(t == 0).flatten()
        sites = torch.cat([r, r[oxygens] + dipoles[lo:hi][oxygens]]).numpy()
        charges = np.concatenate([np.where(t.numpy() == 0, 6.0, 1.0), -8.0 * np.ones(len(oxygens))])
        reference = deepmd_reciprocal_energy(sites, charges, batch[K.CELL][f].numpy(), 0.4, 1.0)
        assert float(lr[K.ENERGY][f]) == pytest.approx(reference, rel=1e-10)
    # E = E_sr + E_lr, per-atom energies sum to the frame energies
    short = model.members[0](batch)[K.ENERGY]
    torch.testing.assert_close(out[K.ENERGY], short + lr[K.ENERGY])
    torch.testing.assert_close(lr[K.ATOM_ENERGY].reshape(2, -1).sum(1), lr[K.ENERGY])


def test_dplr_forces_through_the_wannier_centroids_by_finite_differences(dw_file):
    model = build_model(dplr_section(dw_file), F64)
    batch = water_like_batch()
    assert_forces_match_fd(model, batch, delta=1e-5, atol=1e-6, rtol=1e-5)
    # the long-range member alone, so the chain rule through the DW model is checked without the DP part
    assert_forces_match_fd(model.members[1], batch, delta=1e-5, atol=1e-6, rtol=1e-5)
    forces = compute_derivatives(model.members[1], batch)[K.FORCES]
    assert float(forces.abs().max()) > 1e-2  # a real long-range force, not zero


def test_dplr_virial_by_finite_strain(dw_file):
    model = build_model(dplr_section(dw_file), F64)
    assert_virial_matches_finite_strain(model, water_like_batch(), delta=1e-5, atol=1e-6, rtol=1e-5)


def test_external_field_energy_and_forces(dw_file):
    field = torch.tensor([0.05, -0.02, 0.03], dtype=F64)
    plain = build_model(dplr_section(dw_file), F64).members[1]
    fielded = build_model(dplr_section(dw_file, efield=field.tolist()), F64).members[1]
    batch = water_like_batch()
    sites, charges, _, frame = plain.sites(batch)
    moment = torch.zeros(2, 3, dtype=F64).index_add(0, frame, charges[:, None] * sites).detach()
    difference = fielded(batch)[K.ENERGY] - plain(batch)[K.ENERGY]
    torch.testing.assert_close(difference, -(moment * field).sum(1))
    f_plain = compute_derivatives(plain, batch)[K.FORCES]
    f_field = compute_derivatives(fielded, batch)[K.FORCES]
    # neutral frames: the field's forces (q E on ions and WCs, through the DW model) sum to zero
    torch.testing.assert_close((f_field - f_plain).reshape(2, -1, 3).sum(1), torch.zeros(2, 3, dtype=F64))
    assert float((f_field - f_plain).abs().max()) > 1e-3
    assert_forces_match_fd(fielded, batch, delta=1e-5, atol=1e-6, rtol=1e-5)
    # the same field as a per-frame input (external_field: the potential gradient, minus the field)
    torch.testing.assert_close(plain(dict(batch, **{K.EXTERNAL_FIELD: -field.expand(2, 3)}))[K.ENERGY], fielded(batch)[K.ENERGY])


def test_net_charge_is_an_error_naming_the_frame(dw_file):
    model = build_model(dplr_section(dw_file), F64)
    batch = water_like_batch()
    batch[K.ATOM_TYPES] = batch[K.ATOM_TYPES].clone()
    batch[K.ATOM_TYPES][10] = 0  # frame 1 gets an extra O: 6 - 8 - 1 = -3 e
    with pytest.raises(DataError, match=r"frame 1: .*net charge of -3 e"):
        model(batch)


def test_non_periodic_frame_is_an_error_naming_the_frame(dw_file):
    model = build_model(dplr_section(dw_file), F64)
    batch = water_like_batch()
    batch[K.PBC] = torch.tensor([[True, True, True], [True, True, False]])
    with pytest.raises(DataError, match=r"frame 1: .*periodic in all three directions"):
        model(batch)


def test_deepmd_input_with_modifier_converts_and_builds(dw_file, tmp_path):
    from mlpot.config.deepmd import convert_dict

    section = dplr_section(dw_file)
    config = {"model": section, "learning_rate": {"type": "exp", "start_lr": 1e-3, "decay_steps": 10},
              "loss": {"type": "ener", "start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000, "limit_pref_f": 1},
              "training": {"training_data": {"systems": [str(tmp_path)], "batch_size": 1}, "numb_steps": 1}}
    native = convert_dict(config, base_dir=tmp_path, file="ener.json")
    model = build_model(native["model"], F64)
    assert model.members[1].ewald_beta == 0.4 and model.members[1].ewald_h == 1.0
    assert model.members[1].wc_charge.tolist() == [-8.0, 0.0]


@pytest.mark.parametrize("change, message", [
    ({"ewald_hh": 1.0}, r"model/modifier/ewald_hh.*ewald_h"),
    ({"type": "dipole_charge_beta"}, r"not supported yet: model/modifier/type=dipole_charge_beta"),
    ({"type": "dipole_chrage"}, r"model/modifier/type.*dipole_charge"),
    ({"model_charge_map": [-8, -8]}, r"model/modifier/model_charge_map: has 2 entries, expected one per sel_type"),
    ({"sys_charge_map": [6]}, r"model/modifier/sys_charge_map: has 1 entries"),
    ({"ewald_beta": 0}, r"model/modifier/ewald_beta: must be > 0"),
    ({"efield": [1.0, 2.0]}, r"model/modifier/efield"),
])
def test_bad_modifier_keys_name_the_key_path(dw_file, change, message):
    from mlpot.models.registry import check_model_section

    section = dplr_section(dw_file, **change)
    with pytest.raises(ConfigError, match=message):
        check_model_section(section)
        build_model(section, F64)


def test_missing_or_wrong_dw_model_names_model_name(dw_file, tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pth: model/modifier/model_name: no such file"):
        build_model(dplr_section(tmp_path / "nope.pth"), F64)
    energy = build_model(dict(dplr_section(dw_file), modifier=None), F64)  # no modifier: a plain energy model
    path = tmp_path / "ener.pth"
    torch.save({"format": FROZEN_FORMAT, "format_version": 1, "model_config": energy.config, "dtype": "float64",
                "state_dict": energy.state_dict(), "metadata": {}}, path)
    with pytest.raises(ConfigError, match=r"model/modifier/model_name: .*is not a dipole model"):
        build_model(dplr_section(path), F64)


def test_frozen_dplr_model_is_self_contained(dw_file, tmp_path):
    """The frozen file holds the DW weights and the build records the DW section: it loads without
    model_name's file (as DeePMD-kit's frozen DPLR model holds its DW model), but cannot be trained so."""
    import shutil

    from mlpot.calculators.export import load_model

    dw_copy = tmp_path / "dw_copy.pth"
    shutil.copy(dw_file, dw_copy)
    model = build_model(dplr_section(dw_copy), F64)
    assert model.config["modifier"]["dw_model"]["model_config"]["fitting_net"]["type"] == "dipole"
    path = tmp_path / "dplr.pth"
    torch.save({"format": FROZEN_FORMAT, "format_version": 1, "model_config": model.config, "dtype": "float64",
                "state_dict": model.state_dict(), "metadata": {}}, path)
    dw_copy.unlink()
    loaded = load_model(path)
    batch = water_like_batch()
    torch.testing.assert_close(compute_derivatives(loaded, batch)[K.FORCES], compute_derivatives(model, batch)[K.FORCES])
    with pytest.raises(ConfigError, match=r"model/modifier/model_name: .*dw_copy.pth: no such file; training needs"):
        build_model(model.config, F64).compute_statistics([batch])


def test_ase_calculator_on_a_frozen_dplr_model_gives_short_plus_long_range_and_reads_the_field(dw_file, tmp_path):
    from ase import Atoms

    from mlpot.calculators.ase import MlpotCalculator

    model = build_model(dplr_section(dw_file), F64)
    path = tmp_path / "dplr.pth"
    torch.save({"format": FROZEN_FORMAT, "format_version": 1, "model_config": model.config, "dtype": "float64",
                "state_dict": model.state_dict(), "metadata": {}}, path)
    batch = water_like_batch(1)
    atoms = Atoms("OH2" * 3, positions=batch[K.POSITIONS].numpy(), cell=batch[K.CELL][0].numpy(), pbc=True)
    atoms.calc = MlpotCalculator(str(path))
    reference = compute_derivatives(model, batch)
    short = model.members[0](batch)[K.ENERGY] + model.bias_atom[batch[K.ATOM_TYPES], 0].sum()
    long = model.members[1](batch)[K.ENERGY]
    assert atoms.get_potential_energy() == pytest.approx(float((short + long).detach()), abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), reference[K.FORCES].detach().numpy(), atol=1e-9)
    field = [0.0, 0.0, 0.1]
    with_field = build_model(dplr_section(dw_file, efield=field), F64)
    with_field.load_state_dict(model.state_dict())
    atoms.info["external_field"] = [-x for x in field]  # mlpot's input: the potential gradient
    atoms.calc.reset()
    assert atoms.get_potential_energy() == pytest.approx(float(with_field(batch)[K.ENERGY][0].detach()), abs=1e-9)


def test_example_inputs_convert_and_check():
    """examples/deepmd_water_dplr: the DW input and the DPLR energy input pass the DeePMD front-end."""
    from pathlib import Path

    from mlpot.config.deepmd import convert
    from mlpot.models.registry import check_model_section

    folder = Path(__file__).resolve().parents[1] / "examples" / "deepmd_water_dplr"
    ener = convert(folder / "ener.json")
    check_model_section(ener["model"])
    assert ener["model"]["modifier"]["ewald_beta"] == 0.4 and ener["model"]["modifier"]["model_name"] == "dw.pth"
    dw = convert(folder / "dw.json")
    assert dw["model"]["fitting_net"]["type"] == "dipole"
