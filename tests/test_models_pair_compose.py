"""Pair tables (pairtab, use_srtab blend) and composite models (linear_ener, frozen)."""

import numpy as np
import pytest
import torch
from scipy.interpolate import CubicSpline

from mlpot import testing as T
from mlpot.data import AtomsDataset, collate
from mlpot.data import keys as K
from mlpot.errors import CheckpointError, ConfigError, DataError
from mlpot.models import build_model
from mlpot.models.base import edge_vectors
from mlpot.models.compose import FrozenModel
from mlpot.models.derivatives import compute_derivatives

GRID = np.round(np.arange(0.2, 4.0 + 1e-9, 0.05), 10)


def _pair_energies(r):
    """Three smooth pair energies (0-0, 0-1, 1-1) in eV that vanish with zero slope from 3.5 Å on."""
    decay = np.clip(3.5 - r, 0.0, None) ** 2
    return np.stack([3.0 * np.exp(-1.5 * r) * decay, 2.0 * np.exp(-r) * decay - 0.1 * decay, 1.0 / r * decay], axis=-1)


@pytest.fixture
def table_file(tmp_path):
    path = tmp_path / "table.txt"
    np.savetxt(path, np.column_stack([GRID, _pair_energies(GRID)]))
    return str(path)


def _frames(pairs, cutoff=4.0):
    """Isolated dimers [(distance Å, type_a, type_b), ...] as one batch."""
    frames = [{K.POSITIONS: np.array([[0.0, 0, 0], [0.0, d, 0.0]]), K.CELL: np.zeros((3, 3)), K.PBC: np.zeros(3, bool),
               K.ATOM_TYPES: np.array([a, b])} for d, a, b in pairs]
    dataset = AtomsDataset(frames, cutoff, min_distance=0.0)  # the table checks its own range
    return collate([dataset[i] for i in range(len(frames))])


def pairtab(table_file, rcut=3.5):
    return build_model({"type": "pairtab", "type_map": ["A", "B"], "tab_file": table_file, "rcut": rcut, "sel": [10, 10]})


@pytest.mark.filterwarnings("ignore:dataset")  # short knots: the data layer warns about close atoms
def test_pairtab_equals_the_table_at_knots_and_its_clamped_spline_between(table_file):
    model = pairtab(table_file)
    column = {(0, 0): 0, (0, 1): 1, (1, 0): 1, (1, 1): 2}
    knots = [(GRID[k], a, b) for k in (3, 20, 41, 62) for a, b in ((0, 0), (0, 1), (1, 1))]
    energy = model(_frames(knots))[K.ENERGY]
    expected = [_pair_energies(np.array(d))[column[(a, b)]] for d, a, b in knots]
    np.testing.assert_allclose(energy.numpy(), expected, rtol=1e-12, atol=1e-12)
    spline = CubicSpline(GRID, _pair_energies(GRID), bc_type="clamped")
    between = [(d, a, b) for d in (0.537, 1.2345, 2.71, 3.333) for a, b in ((1, 0), (1, 1))]
    energy = model(_frames(between))[K.ENERGY]
    np.testing.assert_allclose(energy.numpy(), [spline(d)[column[(a, b)]] for d, a, b in between], rtol=1e-12, atol=1e-12)
    # each atom of a dimer carries half of the pair energy; nothing beyond rcut
    atomic = model(_frames([(1.5, 0, 1)]))[K.ATOM_ENERGY]
    torch.testing.assert_close(atomic[0], atomic[1])
    assert model(_frames([(3.5, 0, 1), (3.7, 1, 1)]))[K.ENERGY].abs().max() == 0.0


def test_pairtab_forces_and_virial_by_finite_differences(table_file):
    model = pairtab(table_file, rcut=3.5)
    batch = T.random_batch(2, [8, 7], cutoff=3.5, seed=1)
    T.assert_forces_match_fd(model, batch, atol=1e-7, rtol=1e-6)
    T.assert_virial_matches_finite_strain(model, batch, atol=1e-7, rtol=1e-6)
    T.assert_invariant(model, batch)


@pytest.mark.filterwarnings("ignore:dataset")  # the data layer warns about the 0.1 Å pair too
def test_pairtab_errors(table_file, tmp_path):
    with pytest.raises(DataError, match="closer than the pair table's first distance") as info:
        pairtab(table_file)(_frames([(1.0, 0, 0), (0.1, 0, 1)]))
    assert info.value.frame == 1
    bad = tmp_path / "bad.txt"
    np.savetxt(bad, np.column_stack([GRID, _pair_energies(GRID)[:, :2]]))
    with pytest.raises(ConfigError, match="n\\(n\\+1\\)/2 energy columns"):
        pairtab(str(bad))
    with pytest.raises(ConfigError, match="not found"):
        pairtab(str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="table has 2 types but type_map has 3"):
        build_model({"type": "pairtab", "type_map": ["A", "B", "C"], "tab_file": table_file, "rcut": 3.5})


def test_table_beyond_rcut_is_padded_or_extrapolated_to_zero(tmp_path):
    short = GRID[GRID <= 3.0]
    zero_end = tmp_path / "zero_end.txt"
    values = _pair_energies(short)
    values[-1] = 0.0
    np.savetxt(zero_end, np.column_stack([short, values]))
    model = build_model({"type": "pairtab", "type_map": ["A", "B"], "tab_file": str(zero_end), "rcut": 3.5})
    assert model(_frames([(3.2, 0, 0), (3.45, 1, 1)]))[K.ENERGY].abs().max() < 1e-15  # spline tail of the zero rows
    open_end = tmp_path / "open_end.txt"
    np.savetxt(open_end, np.column_stack([short, _pair_energies(short)]))
    with pytest.warns(RuntimeWarning, match="extrapolating"):
        model = build_model({"type": "pairtab", "type_map": ["A", "B"], "tab_file": str(open_end), "rcut": 3.5})
    energy = model(_frames([(3.0, 1, 1), (3.2, 1, 1), (3.5 - 1e-6, 1, 1), (3.5, 1, 1)]))[K.ENERGY]
    assert abs(energy[0].item() - _pair_energies(np.array(3.0))[2]) < 1e-12
    assert 0 < energy[1].item() < energy[0].item()
    # the cubic reaches 0 with zero slope at the last grid point up to rcut: continuous at rcut
    assert abs(energy[2].item()) < 1e-9 and energy[3].item() == 0.0


def srtab_model(table_file, **extra):
    config = {"type_map": ["A", "B"],
              "descriptor": {"type": "se_e2_a", "sel": [12, 12], "rcut": 3.5, "rcut_smth": 1.0, "neuron": [4, 8],
                             "axis_neuron": 3, "seed": 1},
              "fitting_net": {"neuron": [8, 8], "seed": 2},
              "use_srtab": table_file, "smin_alpha": 0.1, "sw_rmin": 0.9, "sw_rmax": 1.4}
    config.update(extra)
    model = build_model(config)
    model.compute_statistics([T.random_batch(2, 8, seed=5)])
    model.bias_atom.copy_(torch.tensor([[-1.5], [-0.5]], dtype=torch.float64))  # the blend's one output bias
    return model


def test_srtab_blend_limits_and_continuity_between_sw_rmin_and_sw_rmax(table_file):
    model = srtab_model(table_file)
    distances = np.concatenate([[0.5, 0.8, 0.9 - 1e-7, 0.9 + 1e-7], np.linspace(0.95, 1.35, 9), [1.4 - 1e-7, 1.4 + 1e-7, 2.0]])
    batch = _frames([(d, 0, 1) for d in distances])
    blended = model(batch)[K.ENERGY].detach().numpy()
    biases = -1.5 - 0.5  # the blend's bias of both atoms
    network = model.inner(batch)[K.ENERGY].detach().numpy() + biases
    table = _pair_energies(distances)[:, 1] + biases  # pair energy + the biases of both atoms
    inside = distances < 0.9
    np.testing.assert_allclose(blended[inside], table[inside], rtol=1e-12)
    outside = distances >= 1.4
    np.testing.assert_allclose(blended[outside], network[outside], rtol=1e-12)
    # for a dimer σ = r: the weight is the quintic switch, so E is C2 across sw_rmin and sw_rmax
    u = np.clip((distances - 0.9) / 0.5, 0, 1)
    lam = u ** 3 * (-6 * u ** 2 + 15 * u - 10) + 1
    np.testing.assert_allclose(blended, lam * table + (1 - lam) * network, rtol=1e-10)
    assert abs(blended[2] - blended[3]) < 1e-5 and abs(blended[-3] - blended[-2]) < 1e-5
    # forces by finite differences in the switching region and across both ends of it
    T.assert_forces_match_fd(model, _frames([(d, 0, 1) for d in (0.9, 1.1, 1.3, 1.4)]), delta=1e-5, atol=1e-6, rtol=1e-5)


def test_srtab_forces_virial_invariance_on_random_structures(table_file):
    # nearest-neighbour distances of these structures are 1.7-2.3 Å: put the switching region there
    model = srtab_model(table_file, srtab_add_bias=False, smin_alpha=0.2, sw_rmin=1.8, sw_rmax=2.4)
    batch = T.random_batch(2, [8, 7], cutoff=3.5, seed=1)
    lam = model.switch_weight(batch, edge_vectors(batch))
    assert ((lam > 0) & (lam < 1)).sum() >= 4  # several atoms sit in the switching region
    # exp(-r/α) with α = 0.2 Å has large third derivatives: a smaller finite-difference step
    T.assert_forces_match_fd(model, batch, delta=1e-5, atol=1e-6, rtol=1e-5)
    T.assert_virial_matches_finite_strain(model, batch, atol=1e-7, rtol=1e-5)
    T.assert_invariant(model, batch)
    T.assert_batch_consistent(model, batch)


def test_srtab_config_errors(table_file):
    base = {"type_map": ["A", "B"], "descriptor": {"type": "se_e2_a", "sel": [4, 4], "rcut": 3.0}, "fitting_net": {"neuron": [4]}}
    with pytest.raises(ConfigError, match="model/smin_alpha: only used with use_srtab"):
        build_model(dict(base, smin_alpha=0.1))
    with pytest.raises(ConfigError, match="model/sw_rmax: required with use_srtab"):
        build_model(dict(base, use_srtab=table_file, smin_alpha=0.1, sw_rmin=0.5))
    with pytest.raises(ConfigError, match="sw_rmax .* must be larger"):
        build_model(dict(base, use_srtab=table_file, smin_alpha=0.1, sw_rmin=0.5, sw_rmax=0.4))


def small_standard():
    return {"type_map": ["A", "B"],
            "descriptor": {"type": "se_e2_a", "sel": [12, 12], "rcut": 3.0, "rcut_smth": 1.0, "neuron": [4, 8],
                           "axis_neuron": 3, "seed": 1},
            "fitting_net": {"neuron": [8, 8], "seed": 2}}


def test_linear_ener_is_the_weighted_sum_of_its_members(table_file):
    batch = T.random_batch(2, [8, 7], cutoff=3.5, seed=2)
    members = [small_standard(), {"type": "pairtab", "tab_file": table_file, "rcut": 3.5, "sel": 20}]
    for weights, factors in (([0.3, 1.7], [0.3, 1.7]), ("mean", [0.5, 0.5]), ("sum", [1.0, 1.0])):
        model = build_model({"type": "linear_ener", "type_map": ["A", "B"], "models": members, "weights": weights})
        model.compute_statistics([T.random_batch(2, 8, seed=5)])
        assert model.cutoff == 3.5
        out = compute_derivatives(model, batch, forces=True, virial=True)
        parts = [compute_derivatives(m, batch, forces=True, virial=True) for m in model.members]
        atom_bias = model.bias_atom[batch[K.ATOM_TYPES], 0]  # the one output bias of the combined model
        frame_bias = torch.zeros(2, dtype=torch.float64).index_add(0, batch[K.BATCH], atom_bias)
        offsets = {K.ENERGY: frame_bias, K.ATOM_ENERGY: atom_bias, K.FORCES: 0.0, K.VIRIAL: 0.0}
        for key in (K.ENERGY, K.ATOM_ENERGY, K.FORCES, K.VIRIAL):
            torch.testing.assert_close(out[key], factors[0] * parts[0][key] + factors[1] * parts[1][key] + offsets[key])
    T.assert_forces_match_fd(model, batch, atol=1e-7, rtol=1e-5)
    with pytest.raises(ConfigError, match="model/weights"):
        build_model({"type": "linear_ener", "type_map": ["A", "B"], "models": members, "weights": [1.0]})
    with pytest.raises(ConfigError, match="differs from the linear model's"):
        build_model({"type": "linear_ener", "type_map": ["A", "B"], "weights": "sum",
                     "models": [dict(small_standard(), type_map=["B", "A"])]})


def test_frozen_member_loads_the_frozen_file_and_stays_fixed(tmp_path, table_file):
    from mlpot.calculators.export import freeze, load_model

    trained = build_model(small_standard())
    trained.compute_statistics([T.random_batch(2, 8, seed=5)])
    checkpoint = tmp_path / "model.ckpt.pt"
    torch.save({"model_config": trained.config, "model_state_dict": trained.state_dict(), "dtype": "float64"}, checkpoint)
    frozen_file = tmp_path / "frozen.pth"
    freeze(checkpoint, frozen_file)  # the calculators' writer
    model = build_model({"type": "linear_ener", "type_map": ["A", "B"], "weights": [1.0, 1.0],
                         "models": [{"type": "frozen", "model_file": str(frozen_file)},
                                    {"type": "pairtab", "tab_file": table_file, "rcut": 3.5}]})
    frozen = model.members[0]
    assert isinstance(frozen, FrozenModel) and frozen.num_parameters(trainable_only=True) == 0
    model.compute_statistics([T.random_batch(2, 8, seed=11)])  # must not touch the frozen statistics
    batch = T.random_batch(2, 8, cutoff=3.5, seed=3)
    torch.testing.assert_close(frozen(batch)[K.ENERGY], trained(batch)[K.ENERGY])
    torch.testing.assert_close(load_model(frozen_file)(batch)[K.ENERGY], trained(batch)[K.ENERGY])
    assert build_model(model.config).members[0].model_file == str(frozen_file)  # rebuilds from its config
    with pytest.raises(CheckpointError, match="not an mlpot frozen model"):
        build_model({"type": "frozen", "model_file": str(checkpoint)})


def _type_counts(batch, n_frames):
    return torch.zeros(n_frames, 2, dtype=torch.float64).index_put_(
        (batch[K.BATCH], batch[K.ATOM_TYPES]), torch.ones(len(batch[K.BATCH]), dtype=torch.float64), accumulate=True)


@pytest.mark.parametrize("weights,factors", [("sum", [1.0, 1.0]), ([0.3, 1.7], [0.3, 1.7])])
def test_linear_ener_has_one_bias_fitted_to_what_its_members_leave(tmp_path, table_file, weights, factors):
    """Labels E = w_1 E_frozen + w_2 E_table + n . b: the combined model's one bias becomes b exactly
    (DeePMD-kit's linear model owns the output bias; the fixed members' energies are counted)."""
    from mlpot.calculators.export import freeze

    trained = build_model(small_standard())
    trained.compute_statistics([T.random_batch(2, 8, seed=5)])
    checkpoint = tmp_path / "model.ckpt.pt"
    torch.save({"model_config": trained.config, "model_state_dict": trained.state_dict(), "dtype": "float64"}, checkpoint)
    freeze(checkpoint, tmp_path / "frozen.pth")
    members = [{"type": "frozen", "model_file": str(tmp_path / "frozen.pth")},
               {"type": "pairtab", "tab_file": table_file, "rcut": 3.5, "sel": 20}]
    model = build_model({"type": "linear_ener", "type_map": ["A", "B"], "models": members, "weights": weights})
    sample = T.random_batch(4, [8, 7, 9, 6], seed=5)
    with torch.no_grad():
        fixed = factors[0] * model.members[0](sample)[K.ENERGY] + factors[1] * model.members[1](sample)[K.ENERGY]
    bias = torch.tensor([-3.0, -1.0], dtype=torch.float64)
    sample[K.ENERGY] = fixed + _type_counts(sample, 4) @ bias
    summary = model.compute_statistics([sample])
    np.testing.assert_allclose(np.ravel(summary["bias_atom"]), bias.numpy(), atol=1e-8)
    np.testing.assert_allclose(model.bias_atom[:, 0].numpy(), bias.numpy(), atol=1e-8)
    torch.testing.assert_close(model(sample)[K.ENERGY], sample[K.ENERGY])


def test_linear_ener_sum_of_two_standard_models_starts_at_the_labels_not_twice():
    """Two trainable members with weights "sum": each keeps a zero bias of its own, the combined
    bias is fitted once, so the untrained model predicts the label energies on average (not 2x)."""
    model = build_model({"type": "linear_ener", "type_map": ["A", "B"], "weights": "sum",
                         "models": [small_standard(), dict(small_standard(), fitting_net={"neuron": [8, 8], "seed": 3})]})
    sample = T.random_batch(6, [8, 7, 9, 6, 8, 8], seed=7)
    counts = _type_counts(sample, 6)
    sample[K.ENERGY] = counts @ torch.tensor([-150.0, -80.0], dtype=torch.float64) + 0.3 * torch.randn(6, dtype=torch.float64)
    model.compute_statistics([sample])
    for member in model.members:
        assert torch.count_nonzero(member.fitting.bias_atom) == 0
    with torch.no_grad():
        residual = sample[K.ENERGY] - model(sample)[K.ENERGY]
    # least squares: the residual is orthogonal to the type counts, i.e. no per-type offset is left
    np.testing.assert_allclose((counts.T @ residual).numpy(), 0.0, atol=1e-8)
    assert float(residual.abs().max()) < 5.0  # against labels of ~ -1000 eV (2x would be off by ~1000)


def test_srtab_blend_fits_its_bias_to_what_the_table_leaves(table_file):
    """E_i = (1 - λ_i) E_i^DP + λ_i E_i^pair + b_{t_i}: the table energy at short range is counted
    when the bias is fitted, so an untrained blend starts without the table's offset."""
    model = srtab_model(table_file)
    batch = _frames([(d, 0, 1) for d in (0.7, 0.8, 0.95, 1.1, 1.6, 2.0)])
    model.compute_statistics([batch])  # no label yet: input statistics (centred nets) on this sample, zero bias
    with torch.no_grad():
        without_bias = model(batch)[K.ENERGY]
    bias = torch.tensor([-2.5, -0.75], dtype=torch.float64)
    batch[K.ENERGY] = without_bias + _type_counts(batch, 6) @ bias
    model.compute_statistics([batch])
    assert torch.count_nonzero(model.inner.fitting.bias_atom) == 0
    # one type pair per frame: the counts are (1, 1) in every frame, so the minimum-norm solution
    # splits each frame's offset equally between the two types [COMPAT]
    np.testing.assert_allclose(model.bias_atom[:, 0].numpy(), [float(bias.sum()) / 2] * 2, atol=1e-8)
    torch.testing.assert_close(model(batch)[K.ENERGY], batch[K.ENERGY])
