"""Issue #14, non-local charge transfer at constant total charge: neutral push-pull polyenes
X-(CH=CH)_4-Y, X in (H, NH2, OH), Y in (H, NO2, CN, CHO), labelled with GFN2-xTB
(examples/charge_transfer/push_pull.py, generated into tmp_path, ~1 s).

Every frame has total charge 0, and 236 of the 243 atoms are more than 2 rc from one of the two
end groups, so their environments within rc are the same in the frames that differ only by that far
group, while their Mulliken charges change with it (up to 0.015 e). Unlike the protonated Schiff
bases (test_fixed_point_charge_transfer.py), the far-end response is not uniform: along the chain
it alternates (for NH2-...-Y, Y = NO2 vs H, the even carbons counted from X gain 0.009-0.012 e, the
odd ones 0.003-0.004 e), so a uniform shift per frame, MACE-SCF LocalCharges' only non-local
ingredient, cannot reproduce all of it.

The measure: the error of the charge change q_a - q_b between two frames that differ in one end
group only, over the atoms > 2 rc from it (30 pairs, 286 atoms). The fit error of an environment,
common to both frames, cancels; a strictly local model predicts no change at all (error 0.0061 e,
exact); removing each pair's mean error bounds every uniform-shift model (0.0020 e, exact).
Measured (slow test, all 12 frames trained, same se_e2_a backbone, rc 3 Å): LocalCharges
(1500 Adam steps) 0.0027 e, fixed point (constant-charge SCF, one-body update, 1000 steps)
0.0037 e; energy RMSE 0.026 / 0.019 eV. The fixed-point model captures part of the non-local
response but less than LocalCharges' uniform shift. Likely why: inside the chain (carbons 3-5 of 8,
counted from 0 at X) the carbons have the same environment within rc up to a 180° rotation, so equal
invariant features and equal one-body softness, and a one-body response to the potential is smooth
along the chain where the reference alternates. With ManyBodyUpdate (an atom's update sees its
neighbours' potential features) the far-end charge RMSE itself, 0.0029 e, goes below the exact
bound of every local + uniform-shift model, 0.0033 e (last test; strictly local 0.0054 e).
Held-out frames: docs/fixed_point_models.md.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mlpot.data import AtomsDataset, collate, read_frames
from mlpot.data import keys as K

pytest.importorskip("tblite")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "charge_transfer"))
import push_pull  # noqa: E402
from test_fixed_point_charge_transfer import CUTOFF, build_models, errors, local_floors, train  # noqa: E402

TYPE_MAP = ["C", "H", "N", "O"]
BACKBONE = {"type_map": TYPE_MAP, "descriptor": {"type": "se_e2_a", "sel": [10, 12, 3, 3], "rcut": CUTOFF, "rcut_smth": 0.5,
                                                 "neuron": [8, 16], "axis_neuron": 4, "seed": 1},
            "fitting_net": {"neuron": [16, 16], "seed": 1}}


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    import ase.io

    path = tmp_path_factory.mktemp("push_pull") / "push_pull.xyz"
    molecules = push_pull.make_frames((4,))
    ase.io.write(path, molecules, format="extxyz")
    frames = read_frames(path, type_map=TYPE_MAP)
    dataset = AtomsDataset(frames, CUTOFF)
    far = np.concatenate([(group_distance(atoms, "donor") > 2 * CUTOFF) | (group_distance(atoms, "acceptor") > 2 * CUTOFF)
                          for atoms in molecules])
    return molecules, frames, collate([dataset[i] for i in range(len(dataset))]), torch.from_numpy(far)


def response_pairs(molecules):
    """Frame pairs (a, b) with the same chain length that differ in one end group only, with the atoms
    of a more than 2 * CUTOFF from a's differing group and their partners in b (same element, same
    place, also more than 2 * CUTOFF from b's group): a list of (a, b, atoms of a, atoms of b). A
    paired atom has the same environment within CUTOFF in a and b (the molecules are built from the
    X end and share every coordinate except the differing group's)."""
    pairs = []
    for a, b in ((a, b) for a in range(len(molecules)) for b in range(a + 1, len(molecules))):
        info_a, info_b = molecules[a].info, molecules[b].info
        differing = [end for end in ("donor", "acceptor") if info_a[end] != info_b[end]]
        if info_a["n_double_bonds"] != info_b["n_double_bonds"] or len(differing) != 1:
            continue
        far_a, far_b = (group_distance(molecules[i], differing[0]) > 2 * CUTOFF for i in (a, b))
        pa, pb = molecules[a].positions, molecules[b].positions
        same = (np.linalg.norm(pa[:, None] - pb[None], axis=2) < 1e-6) & \
            (molecules[a].numbers[:, None] == molecules[b].numbers[None])
        atoms_a, atoms_b = np.nonzero(same & far_a[:, None] & far_b[None])
        pairs.append((a, b, atoms_a, atoms_b))
    return pairs


def group_distance(atoms, end: str) -> np.ndarray:
    """Per atom, the distance (Å) to the nearest atom of the ``end`` ("donor" or "acceptor") group."""
    n_chain, n_donor = 4 * atoms.info["n_double_bonds"], len(push_pull.GROUP_BONDS[atoms.info["donor"]])
    group = atoms.positions[n_chain:n_chain + n_donor] if end == "donor" else atoms.positions[n_chain + n_donor:]
    return np.linalg.norm(atoms.positions[:, None] - group[None], axis=2).min(1)


def response_error(charges, reference, pairs, uniform=False):
    """RMS over paired atoms of the error of the charge change q_a - q_b (e). ``charges``,
    ``reference``: per frame, (n_atoms,) arrays. A strictly local model predicts no change, so its
    error is the RMS of the reference change; ``uniform``: after removing each pair's mean error,
    the bound for any model whose far-end response is a uniform shift (LocalCharges)."""
    residuals = []
    for a, b, atoms_a, atoms_b in pairs:
        error = (charges[a][atoms_a] - charges[b][atoms_b]) - (reference[a][atoms_a] - reference[b][atoms_b])
        residuals.append(error - error.mean() if uniform else error)
    return float(np.sqrt((np.concatenate(residuals) ** 2).mean()))


def test_far_end_response_is_not_uniform(chains):
    molecules, frames, batch, far = chains
    reference = [frame[K.CHARGES] for frame in frames]
    assert max(abs(q.sum()) for q in reference) < 1e-6  # every frame neutral
    strict_floor, shift_floor = local_floors(frames, far.numpy())
    assert int(far.sum()) == 236
    assert strict_floor > 0.005  # e: no strictly local model gets below this on the far atoms
    assert shift_floor > 0.55 * strict_floor  # Schiff bases: 0.41; the uniform shift helps less here
    pairs = response_pairs(molecules)
    assert (len(pairs), sum(len(p[2]) for p in pairs)) == (30, 286)
    zero = [np.zeros_like(q) for q in reference]
    strict, uniform = response_error(zero, reference, pairs), response_error(zero, reference, pairs, uniform=True)
    assert 0.006 < strict < 0.0065 and 0.0019 < uniform < 0.0021  # e, the RMS far-end response and its non-uniform part
    # the response alternates along the chain: NH2-(CH=CH)4-Y, Y = NO2 vs H, chain carbons 0-3 (> 2 rc from Y)
    index = {(m.info["donor"], m.info["acceptor"]): i for i, m in enumerate(molecules)}
    change = reference[index["NH2", "NO2"]][:4] - reference[index["NH2", "H"]][:4]
    assert change[[0, 2]].min() > 2 * change[[1, 3]].max() > 0.0


@pytest.mark.slow
def test_fixed_point_far_end_response(chains):
    """~5 min on one core: LocalCharges 1500 Adam steps (~0.5-2 min), fixed point 1000 steps (~4-6 min)."""
    molecules, frames, batch, far = chains
    reference = [frame[K.CHARGES] for frame in frames]
    pairs = response_pairs(molecules)
    zero = [np.zeros_like(q) for q in reference]
    strict, uniform_floor = response_error(zero, reference, pairs), response_error(zero, reference, pairs, uniform=True)
    split = np.cumsum([len(q) for q in reference])[:-1]
    local, fixed_point = build_models(BACKBONE)
    local_q, local_e = train(local, batch, 1500)
    fp_q, fp_e = train(fixed_point, batch, 1000)
    results = {}
    for name, charges, energies in (("LocalCharges", local_q, local_e), ("fixed point", fp_q, fp_e)):
        far_rmse, energy_rmse = errors(charges, energies, batch, far)
        response = response_error(np.split(charges.numpy(), split), reference, pairs)
        results[name] = response
        print(f"{name}: far-end response error {response:.4f} e, far-end charge RMSE {far_rmse:.4f} e, "
              f"energy RMSE {energy_rmse:.3f} eV")
    assert results["LocalCharges"] >= uniform_floor - 1e-9  # the bound holds for LocalCharges
    assert results["LocalCharges"] < 0.6 * strict  # the uniform shift captures most of the response (0.0027 e)
    # the fixed point captures part of it (0.0037 e), NOT more than LocalCharges (module docstring)
    assert results["fixed point"] < 0.75 * strict


@pytest.mark.slow
def test_many_body_fixed_point_beats_uniform_shift_bound(chains):
    """~9-15 min on one core (1000 steps; 559 s measured). With ManyBodyUpdate (the update of each atom sees its
    neighbours' potential features), the far-end charge RMSE goes below the exact bound of every
    local + uniform-shift model, LocalCharges included (measured 0.0029 e vs 0.0033 e; strictly local
    floor 0.0054 e; energy RMSE 0.019 eV)."""
    molecules, frames, batch, far = chains
    strict_floor, shift_floor = local_floors(frames, far.numpy())
    _, fixed_point = build_models(BACKBONE, update="ManyBodyUpdate")
    charges, energies = train(fixed_point, batch, 1000)
    far_rmse, energy_rmse = errors(charges, energies, batch, far)
    print(f"many-body fixed point: far-end charge RMSE {far_rmse:.4f} e (floors: strictly local {strict_floor:.4f}, "
          f"local + uniform shift {shift_floor:.4f}), energy RMSE {energy_rmse:.3f} eV")
    assert far_rmse < shift_floor < strict_floor
    assert energy_rmse < 0.03  # eV
