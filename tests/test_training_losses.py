"""Loss registry: weighted means that ignore missing labels, normalisations, DeePMD prefactors."""

import math

import pytest
import torch

from mlpot.training.schema import LossTerm
from mlpot.data import keys as K
from mlpot.errors import ConfigError
from mlpot.training.losses import WeightedLoss
from mlpot.training.metrics import label_error_sums, rmse_mae


def make_batch(n_atoms, with_label, seed=0):
    """A batch of frames with random labels/predictions; frames with with_label[i]=False lack labels."""
    g = torch.Generator().manual_seed(seed)
    n_atoms = torch.tensor(n_atoms)
    n_frames, total = len(n_atoms), int(n_atoms.sum())
    w = torch.tensor([1.0 if x else 0.0 for x in with_label], dtype=torch.float64)
    batch = {
        K.N_ATOMS: n_atoms, K.BATCH: torch.repeat_interleave(torch.arange(n_frames), n_atoms),
        K.ENERGY: torch.randn(n_frames, generator=g, dtype=torch.float64) * w,
        K.FORCES: torch.randn(total, 3, generator=g, dtype=torch.float64),
        K.VIRIAL: torch.randn(n_frames, 3, 3, generator=g, dtype=torch.float64),
        K.weight_key(K.ENERGY): w, K.weight_key(K.FORCES): w.clone(), K.weight_key(K.VIRIAL): w.clone(),
    }
    batch[K.FORCES][~w.bool()[batch[K.BATCH]]] = 0.0  # missing labels are zero-filled by collate
    pred = {k: torch.randn(batch[k].shape, generator=g, dtype=torch.float64) for k in (K.ENERGY, K.FORCES, K.VIRIAL)}
    return pred, batch


def subset(pred, batch, frames):
    """The same data restricted to ``frames`` (indices)."""
    frames = torch.as_tensor(frames)
    atom_mask = torch.isin(batch[K.BATCH], frames)
    out_b = {K.N_ATOMS: batch[K.N_ATOMS][frames],
             K.BATCH: torch.repeat_interleave(torch.arange(len(frames)), batch[K.N_ATOMS][frames])}
    for k in (K.ENERGY, K.VIRIAL, K.weight_key(K.ENERGY), K.weight_key(K.FORCES), K.weight_key(K.VIRIAL)):
        out_b[k] = batch[k][frames]
    out_b[K.FORCES] = batch[K.FORCES][atom_mask]
    out_p = {K.ENERGY: pred[K.ENERGY][frames], K.VIRIAL: pred[K.VIRIAL][frames], K.FORCES: pred[K.FORCES][atom_mask]}
    return out_p, out_b


TERMS = {
    "energy": LossTerm(weight=0.5), "energy_per_atom": LossTerm(weight=2.0, function="huber", huber_delta=0.3),
    "forces": LossTerm(start_pref=1000.0, limit_pref=1.0, function="mae"), "virial_per_atom": LossTerm(weight=0.1),
}


@pytest.mark.parametrize("loss_type", ["native", "ener"])
def test_missing_labels_do_not_count(loss_type):
    pred, batch = make_batch([3, 5, 4, 6], [True, False, True, False])
    loss = WeightedLoss(TERMS, loss_type=loss_type)
    total, weighted, raw = loss(pred, batch, lr_ratio=0.3)
    total_ref, weighted_ref, _ = loss(*subset(pred, batch, [0, 2]), lr_ratio=0.3)
    assert torch.allclose(total, total_ref, rtol=1e-12)
    for name in weighted:
        assert torch.allclose(weighted[name], weighted_ref[name], rtol=1e-12)
    # a batch without the label at all: the term is absent, not zero-valued
    _, weighted_none, _ = loss(*subset(pred, batch, [1, 3]), lr_ratio=0.3)
    assert weighted_none == {}


def test_term_formulas_and_prefactors():
    pred, batch = make_batch([3, 5], [True, True])
    n = batch[K.N_ATOMS].double()
    de = pred[K.ENERGY] - batch[K.ENERGY]
    dv = pred[K.VIRIAL] - batch[K.VIRIAL]
    df = pred[K.FORCES] - batch[K.FORCES]
    terms = {"energy": LossTerm(start_pref=0.02, limit_pref=1.0), "forces": LossTerm(start_pref=1000.0, limit_pref=1.0),
             "virial": LossTerm(start_pref=0.5, limit_pref=0.5)}
    ratio = 0.25
    total, weighted, raw = WeightedLoss(terms, loss_type="ener")(pred, batch, lr_ratio=ratio)
    # DeePMD (spec 4.2): L_E = mean(ΔE²/N), L_F = mean over 3N comps, L_V = mean(ΔΞ²)/N
    assert raw["energy"] == pytest.approx(float((de**2 / n).mean()))
    assert raw["forces"] == pytest.approx(float((df**2).mean()))
    assert raw["virial"] == pytest.approx(float((dv**2 / n[:, None, None]).mean()))
    p_e, p_f = 1.0 + (0.02 - 1.0) * ratio, 1.0 + (1000.0 - 1.0) * ratio
    assert float(total) == pytest.approx(p_e * raw["energy"] + p_f * raw["forces"] + 0.5 * raw["virial"])
    _, _, raw_int = WeightedLoss(terms, loss_type="ener", intensive=True)(pred, batch)
    assert raw_int["energy"] == pytest.approx(float(((de / n) ** 2).mean()))
    # native: energy is total, energy_per_atom is (ΔE/N)^2, MAE is |r|
    _, _, raw_nat = WeightedLoss({"energy": LossTerm(), "energy_per_atom": LossTerm(),
                                  "forces": LossTerm(function="mae")})(pred, batch)
    assert raw_nat["energy"] == pytest.approx(float((de**2).mean()))
    assert raw_nat["energy_per_atom"] == pytest.approx(float(((de / n) ** 2).mean()))
    assert raw_nat["forces"] == pytest.approx(float(df.abs().mean()))


def test_label_error_sums_and_unknown_term():
    pred, batch = make_batch([3, 5, 4], [True, False, True])
    sums = label_error_sums(pred, batch, [K.ENERGY, K.FORCES])
    keep = torch.tensor([0, 2])
    de = (pred[K.ENERGY] - batch[K.ENERGY])[keep]
    rmse, mae = rmse_mae(sums[K.ENERGY])
    assert rmse == pytest.approx(math.sqrt(float((de**2).mean()))) and mae == pytest.approx(float(de.abs().mean()))
    rmse_pa, _ = rmse_mae(sums["energy_per_atom"])
    assert rmse_pa == pytest.approx(math.sqrt(float(((de / batch[K.N_ATOMS][keep]) ** 2).mean())))
    assert math.isnan(rmse_mae(torch.zeros(3))[0])
    with pytest.raises(ConfigError, match=r"loss.terms.forcs: unknown loss term.*did you mean 'forces'"):
        WeightedLoss({"forcs": LossTerm()})


def test_collated_frames_without_labels_match_labelled_subset(tmp_path):
    """Real frames through collate and a tiny se_e2_a model: unlabelled frames change nothing."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from mlpot.data import AtomsDataset, collate
    from mlpot.data.frames import FrameList
    from mlpot.models import build_model
    from mlpot.training.trainer import predict

    rng = torch.Generator().manual_seed(0)
    frames = []
    for n in range(4):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (1, 1, 1 + n % 2)
        atoms.positions += 0.1 * torch.randn(atoms.positions.shape, generator=rng, dtype=torch.float64).numpy()
        atoms.calc = EMT()
        frame = {K.POSITIONS: atoms.positions, K.ATOM_TYPES: torch.zeros(len(atoms), dtype=torch.long).numpy(),
                 K.NUMBERS: atoms.numbers, K.CELL: atoms.cell.array, K.PBC: atoms.pbc}
        if n % 2 == 0:  # frames 0 and 2 carry energy and forces, 1 and 3 only forces
            frame[K.ENERGY] = atoms.get_potential_energy()
        frame[K.FORCES] = atoms.get_forces()
        frames.append(frame)
    model = build_model({"type_map": ["Cu"], "descriptor": {"type": "se_e2_a", "sel": [48], "rcut": 4.0,
                         "rcut_smth": 1.0, "neuron": [4, 8], "axis_neuron": 2, "seed": 1},
                         "fitting_net": {"neuron": [8], "seed": 1}})
    dataset = AtomsDataset(FrameList(frames, ["Cu"]), cutoff=4.0)
    loss = WeightedLoss({"energy": LossTerm(weight=1.0), "energy_per_atom": LossTerm(weight=3.0),
                         "forces": LossTerm(weight=10.0)}, loss_type="ener")
    mixed = collate([dataset[i] for i in range(4)])
    labelled = collate([dataset[0], dataset[2]])
    assert mixed[K.weight_key(K.ENERGY)].tolist() == [1.0, 0.0, 1.0, 0.0]
    _, w_mixed, _ = loss(predict(model, mixed, loss.labels, create_graph=False), mixed)
    _, w_lab, _ = loss(predict(model, labelled, loss.labels, create_graph=False), labelled)
    for name in ("energy", "energy_per_atom"):
        assert float(w_mixed[name].detach()) == pytest.approx(float(w_lab[name].detach()), rel=1e-12)


def test_deepmd_display_rmse_identity():
    """Spec 4.2: rmse = sqrt(p_f rmse_f^2 + p_e (rmse_e N)^2 / N) for a one-frame batch."""
    from mlpot.training.metrics import lcurve_values

    pred, batch = make_batch([192], [True])
    loss = WeightedLoss({"energy": LossTerm(start_pref=0.02, limit_pref=1.0),
                         "forces": LossTerm(start_pref=1000.0, limit_pref=1.0)}, loss_type="ener")
    total, _, _ = loss(pred, batch, lr_ratio=1.0)
    values = lcurve_values(float(total), label_error_sums(pred, batch, loss.labels), loss.labels)
    expected = math.sqrt(1000 * values["rmse_f"] ** 2 + 0.02 * (values["rmse_e"] * 192) ** 2 / 192)
    assert values["rmse"] == pytest.approx(expected, rel=1e-12)
