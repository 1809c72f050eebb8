"""Issue #14, non-local charge transfer: polyene Schiff bases, neutral and protonated at the N end,
labelled with GFN2-xTB (examples/charge_transfer/make_dataset.py, generated into tmp_path, ~1 s).

The CH2-end atoms more than 2 rc from the N atom have identical environments (within rc) in every
frame, yet their Mulliken charges change with protonation and chain length (the CH2 group: +0.004 e
neutral, +0.169 e protonated with 2 C=C, +0.084 e with 5 C=C). So:

* an exact floor for every strictly local charge model: the RMS deviation of those atoms' charges
  from the mean over atoms with the same environment (translation and the chain's C2 rotation);
* MACE-SCF's LocalCharges is not strictly local: it shifts all charges uniformly to the total
  charge, and a delocalised cation spreads its charge almost uniformly (the CH2 group's charge
  times N is 2.0-2.4 e for every length), so that shift already recovers most of the far-end change;
* the fixed-point model (same se_e2_a backbone, rc = 3 Å, constant-charge SCF) resolves it through
  the field features and the Fermi level.

Measured (this file's settings, 10 training frames, errors on them): far-end charge RMSE
strictly-local floor 0.0152 e, LocalCharges 0.0065 e (floor of local + uniform shift 0.0062 e),
fixed point 0.0061 e; energy RMSE 0.033 eV (LocalCharges), 0.108 eV (fixed point). On this data the
fixed-point model is NOT several times better than LocalCharges at the far end: the delocalised
cation is close to the uniform shift's assumption. Data where the far-end change is not uniform
(e.g. same total charge, donor vs acceptor end groups) would be the next test.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mlpot.data import AtomsDataset, collate, read_frames
from mlpot.data import keys as K
from mlpot.models.registry import build_model

pytest.importorskip("tblite")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "charge_transfer"))
import make_dataset  # noqa: E402

CUTOFF = 3.0  # Å; the far-end atoms are > 2 * CUTOFF from N
TYPE_MAP = ["C", "H", "N"]
BACKBONE = {"type_map": TYPE_MAP, "descriptor": {"type": "se_e2_a", "sel": [10, 12, 2], "rcut": CUTOFF, "rcut_smth": 0.5,
                                                 "neuron": [8, 16], "axis_neuron": 4, "seed": 1},
            "fitting_net": {"neuron": [16, 16], "seed": 1}}


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    import ase.io

    path = tmp_path_factory.mktemp("charge_transfer") / "schiff_bases.xyz"
    ase.io.write(path, make_dataset.make_frames((2, 3, 4, 5, 6)), format="extxyz")
    frames = read_frames(path, type_map=TYPE_MAP)
    dataset = AtomsDataset(frames, CUTOFF)
    far = [np.linalg.norm(f[K.POSITIONS] - f[K.POSITIONS][f[K.ATOM_TYPES] == 2][0], axis=1) > 2 * CUTOFF for f in frames]
    return frames, collate([dataset[i] for i in range(len(dataset))]), torch.from_numpy(np.concatenate(far))


def environment_keys(frames, cutoff, decimals=2):
    """Per atom, its neighbours within ``cutoff`` (species, relative position rounded to 0.01 Å),
    canonical over the identity and the 180° rotation about z (the planar chain's C2 axis). Atoms
    with equal keys have identical environments, so any local model gives them equal charges (keys
    finer than that equivalence only lower the floor below)."""
    keys = []
    for frame in frames:
        positions, types = frame[K.POSITIONS], frame[K.ATOM_TYPES]
        for atom in range(len(positions)):
            offsets = positions - positions[atom]
            inside = np.flatnonzero(np.linalg.norm(offsets, axis=1) < cutoff)
            keys.append(min(tuple(sorted((int(types[j]),) + tuple(np.round(offsets[j] * sign, decimals) + 0.0) for j in inside))
                            for sign in (np.array([1, 1, 1]), np.array([-1, -1, 1]))))
    return keys


def local_floors(frames, far):
    """(far-end RMSE floor of strictly local models, far-end RMSE of the best local + per-frame
    uniform shift fit), in e. The first is exact: the best local prediction of an environment is
    the mean charge over its atoms."""
    charges = np.concatenate([f[K.CHARGES] for f in frames])
    keys = environment_keys(frames, CUTOFF)
    column = np.array([{key: i for i, key in enumerate(dict.fromkeys(keys))}[key] for key in keys])
    strict = charges - np.array([charges[column == c].mean() for c in column])
    frame_of = np.repeat(np.arange(len(frames)), [len(f[K.POSITIONS]) for f in frames])
    design = np.zeros((len(charges), column.max() + 1 + len(frames)))
    design[np.arange(len(charges)), column] = 1.0
    design[np.arange(len(charges)), column.max() + 1 + frame_of] = 1.0
    shifted = charges - design @ np.linalg.lstsq(design, charges, rcond=None)[0]
    return float(np.sqrt((strict[far] ** 2).mean())), float(np.sqrt((shifted[far] ** 2).mean()))


def build_models(backbone, update="OneBodyVariableUpdate"):
    """LocalCharges and the fixed-point model (constant-charge SCF, linearize_solve, the ``update`` rule)
    on ``backbone`` (an se_e2_a section), charges only (l = 0), Coulomb in real space (molecules)."""
    section = {"backbone": backbone, "atomic_multipoles_max_l": 0, "hidden_channels": 8, "electrostatic_pbc_method": "realspace"}
    torch.manual_seed(0)
    local = build_model({"type": "local_charges", **section})
    torch.manual_seed(0)
    fixed_point = build_model({"type": "fixed_point", **section, "field_feature_max_l": 0, "fermi_level_offset": 0.0,
                               "fixedpoint_update_config": {"type": update}})
    fixed_point.set_options({"mode": "linearize_solve", "scf": {"num_scf_steps": 100, "mixing_parameter": 0.5,
                                                                "constant_charge": True, "scf_tolerance": 1e-6}})
    return local, fixed_point


def train(model, batch, steps, lr=0.01):
    """Adam on 100 (charge error)^2 + (energy error per atom)^2 over all frames at once."""
    torch.manual_seed(0)
    model.compute_statistics([batch])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        out = model(batch)
        loss = 100 * (out[K.CHARGES] - batch[K.CHARGES]).pow(2).mean() + \
            ((out[K.ENERGY] - batch[K.ENERGY]) / batch[K.N_ATOMS]).pow(2).mean()
        loss.backward()
        optimizer.step()
    out = model(batch)
    return out[K.CHARGES].detach(), out[K.ENERGY].detach()


def errors(charges, energies, batch, far):
    return (float((charges - batch[K.CHARGES])[far].pow(2).mean().sqrt()),
            float((energies - batch[K.ENERGY]).pow(2).mean().sqrt()))


def test_far_end_environments_identical_but_charges_differ(chains):
    frames, batch, far = chains
    assert int(far.sum()) == 100
    strict_floor, shift_floor = local_floors(frames, far.numpy())
    assert strict_floor > 0.015  # e: no strictly local model gets below this on the far-end atoms
    assert shift_floor < 0.5 * strict_floor  # the uniform shift to the total charge is itself non-local


@pytest.mark.slow
def test_fixed_point_resolves_far_end_charges(chains):
    """~110 s: LocalCharges 300 Adam steps (~17 s), fixed point 200 SCF steps (~90 s)."""
    frames, batch, far = chains
    strict_floor, shift_floor = local_floors(frames, far.numpy())
    local, fixed_point = build_models(BACKBONE)
    local_q, local_e = train(local, batch, 300)
    fp_q, fp_e = train(fixed_point, batch, 200)
    local_far, local_energy = errors(local_q, local_e, batch, far)
    fp_far, fp_energy = errors(fp_q, fp_e, batch, far)
    print(f"far-end charge RMSE (e): strictly-local floor {strict_floor:.4f}, local+shift floor {shift_floor:.4f}, "
          f"LocalCharges {local_far:.4f}, fixed point {fp_far:.4f}; energy RMSE (eV): LocalCharges {local_energy:.3f}, "
          f"fixed point {fp_energy:.3f}")
    assert local_far >= shift_floor - 1e-9  # the floor is a bound for LocalCharges too
    # below what any strictly local model can reach; NOT several times below LocalCharges (module docstring)
    assert fp_far < 0.5 * strict_floor
