"""se_e2_r, hybrid, dipole, polar and dos fittings: physics checks; build_model key handling."""

import math
import numpy as np
import pytest
import torch

from mlpot import testing as T
from mlpot.data import keys as K
from mlpot.errors import ConfigError
from mlpot.models import build_model
from mlpot.models.deepmd.builders import resolve_auto_sel
from mlpot.models.base import edge_vectors

SE_A = {"type": "se_e2_a", "sel": [12, 12], "rcut": 3.5, "rcut_smth": 1.0, "neuron": [4, 8], "axis_neuron": 3, "seed": 1}
SE_R = {"type": "se_r", "sel": [12, 12], "rcut": 3.0, "rcut_smth": 0.5, "neuron": [4, 8], "seed": 3}


def model_for(descriptor, fitting, dtype=torch.float64, batch=None):
    precision = "float64" if dtype == torch.float64 else "float32"
    descriptor = dict(descriptor, precision=precision) if descriptor["type"] != "hybrid" else {
        "type": "hybrid", "list": [dict(d, precision=precision) for d in descriptor["list"]]}
    model = build_model({"type_map": ["A", "B"], "descriptor": descriptor, "fitting_net": dict(fitting, precision=precision)})
    model.compute_statistics([batch if batch is not None else T.random_batch(2, 8, seed=5)])
    return model


def tol(dtype):
    return dict(atol=1e-7, rtol=1e-6) if dtype == torch.float64 else dict(atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("descriptor", [SE_R, {"type": "hybrid", "list": [SE_A, SE_R]}], ids=["se_e2_r", "hybrid"])
def test_energy_models_physics(dtype, descriptor):
    batch = T.random_batch(2, [8, 7], seed=1)
    model = model_for(descriptor, {"neuron": [8, 8], "seed": 2}, dtype)
    if dtype == torch.float64:
        T.assert_forces_match_fd(model, batch)
        T.assert_virial_matches_finite_strain(model, batch)
    T.assert_invariant(model, batch, **tol(dtype))
    T.assert_batch_consistent(model, batch, **tol(dtype))


def test_se_e2_r_formula():
    # one neighbour pair of an isolated dimer: D = (1/5)(1/N_c)[sum over slots of N(s~)], padding included
    batch = T.random_batch(1, 2, periodic=False, box=2.0, seed=9)
    model = model_for(SE_R, {"neuron": [4], "seed": 2})
    d, rot = model.descriptor(batch, edge_vectors(batch))
    assert rot is None and d.shape == (2, 8)
    desc = model.descriptor
    r = edge_vectors(batch)[0].norm()
    from mlpot.nn import smooth_switch

    types = batch[K.ATOM_TYPES]
    for i in range(2):
        ti, tj = int(types[i]), int(types[1 - i])
        s_real = (smooth_switch(r, 0.5, 3.0) / r - desc.davg[ti, 0]) / desc.dstd[ti, 0]
        s_pad = -desc.davg[ti, 0] / desc.dstd[ti, 0]
        total = torch.zeros(8, dtype=torch.float64)
        for t in range(2):
            net = desc.embeddings[ti * 2 + t]  # type_one_side false: one net per (centre, neighbour) type
            n_real = 1 if t == tj else 0
            total = total + n_real * net(s_real.reshape(1, 1))[0] + (12 - n_real) * net(s_pad.reshape(1, 1))[0]
        torch.testing.assert_close(d[i].detach(), (total / 24 / 5).detach())


def test_hybrid_concatenates_and_uses_largest_cutoff():
    model = model_for({"type": "hybrid", "list": [SE_A, SE_R]}, {"neuron": [8], "seed": 2})
    assert model.cutoff == 3.5 and model.descriptor.rcut_smth == 0.5
    assert model.descriptor.dim_out == 24 + 8 and model.descriptor.sel == [24, 24]
    batch = T.random_batch(1, 8, seed=2)
    d, _ = model.descriptor(batch, edge_vectors(batch))
    d_a, _ = model.descriptor.descriptors[0](batch, edge_vectors(batch))
    torch.testing.assert_close(d[:, :24], d_a)


def test_dipole_rotates_as_a_vector(dtype):
    batch = T.random_batch(2, 8, seed=3)
    model = model_for(SE_A, {"type": "dipole", "neuron": [8, 8], "sel_type": [0], "seed": 4}, dtype)
    out = model(batch)
    assert out[K.ATOMIC_DIPOLE].shape == (16, 3) and out[K.DIPOLE].shape == (2, 3)
    assert out[K.ATOMIC_DIPOLE][batch[K.ATOM_TYPES] == 1].abs().max() == 0  # sel_type
    assert out[K.ATOMIC_DIPOLE][batch[K.ATOM_TYPES] == 0].abs().max() > 0
    T.assert_equivariant_vector(model, batch, K.DIPOLE, **tol(dtype))
    T.assert_equivariant_vector(model, batch, K.ATOMIC_DIPOLE, **tol(dtype))
    T.assert_invariant(model, batch, keys=(), rotation=False, forces=False)
    T.assert_batch_consistent(model, batch, keys=(K.DIPOLE, K.ATOMIC_DIPOLE), forces=False, **tol(dtype))


@pytest.mark.parametrize("fit_diag", [True, False])
def test_polar_rotates_as_a_rank2_tensor(dtype, fit_diag):
    batch = T.random_batch(2, 8, seed=3)
    batch[K.POLARIZABILITY] = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1) * 16.0
    model = model_for(SE_A, {"type": "polar", "neuron": [8], "fit_diag": fit_diag, "scale": [1.0, 2.0], "seed": 4}, dtype, batch)
    out = model(batch)
    assert out[K.POLARIZABILITY].shape == (2, 3, 3)
    torch.testing.assert_close(out[K.POLARIZABILITY], out[K.POLARIZABILITY].transpose(1, 2), **tol(dtype))
    T.assert_equivariant_tensor(model, batch, K.POLARIZABILITY, **tol(dtype))
    T.assert_batch_consistent(model, batch, keys=(K.POLARIZABILITY,), forces=False, **tol(dtype))
    # shift_diag: the per-type constant solves counts · (scale c) ≈ trace/3 = 16 (minimum norm)
    c = model.fitting.constant_matrix * model.fitting.scale
    counts = torch.stack([(batch[K.ATOM_TYPES][batch[K.BATCH] == f] == t).sum() for f in range(2) for t in range(2)]).reshape(2, 2)
    torch.testing.assert_close((counts.to(torch.float64) @ c), torch.full((2,), 16.0, dtype=torch.float64))


def test_dos_fitting_bias_and_invariance(dtype):
    batch = T.random_batch(2, 8, seed=3)
    batch[K.DOS] = torch.linspace(0, 1, 5, dtype=torch.float64).repeat(2, 1) * batch[K.N_ATOMS].unsqueeze(1)
    model = model_for(SE_A, {"type": "dos", "numb_dos": 5, "neuron": [8], "seed": 4}, dtype, batch)
    out = model(batch)
    assert out[K.DOS].shape == (2, 5) and out[K.ATOM_DOS].shape == (16, 5)
    counts = torch.stack([(batch[K.ATOM_TYPES][batch[K.BATCH] == f] == t).sum() for f in range(2) for t in range(2)]).reshape(2, 2)
    torch.testing.assert_close(counts.to(torch.float64) @ model.fitting.bias_atom, batch[K.DOS])
    T.assert_invariant(model, batch, keys=(K.DOS, K.ATOM_DOS), forces=False, **tol(dtype))


def test_fparam_aparam_inputs_are_normalised_and_used():
    batch = T.random_batch(2, 8, seed=3)
    batch[K.FPARAM] = torch.tensor([[0.5], [1.5]], dtype=torch.float64)
    batch[K.APARAM] = torch.rand(16, 2, dtype=torch.float64)
    model = model_for(SE_A, {"neuron": [8], "numb_fparam": 1, "numb_aparam": 2, "seed": 4}, batch=batch)
    torch.testing.assert_close(model.fitting.fparam_avg, torch.tensor([1.0], dtype=torch.float64))
    torch.testing.assert_close(model.fitting.fparam_inv_std, torch.tensor([2.0], dtype=torch.float64))
    e0 = model(batch)[K.ENERGY]
    changed = dict(batch, **{K.FPARAM: batch[K.FPARAM] + 1})
    assert (model(changed)[K.ENERGY] - e0).abs().min() > 0
    with pytest.raises(ConfigError, match="needs fparam"):
        model({k: v for k, v in batch.items() if k != K.FPARAM})


def test_atom_ener_sets_the_isolated_atom_energy():
    # with set_davg_zero an isolated atom has D = 0, so its energy is exactly the preset bias
    model = model_for(dict(SE_A, set_davg_zero=True), {"neuron": [8], "atom_ener": [-3.0, None], "seed": 4})
    batch = T.random_batch(1, 1, periodic=False, seed=1)
    batch[K.ATOM_TYPES] = torch.tensor([0])
    torch.testing.assert_close(model(batch)[K.ENERGY], torch.tensor([-3.0], dtype=torch.float64))


def test_atom_exclude_types_zero_atomic_outputs():
    model = build_model({"type_map": ["A", "B"], "descriptor": SE_A, "fitting_net": {"neuron": [8]}, "atom_exclude_types": [1]})
    batch = T.random_batch(1, 8, seed=2)
    out = model(batch)
    assert out[K.ATOM_ENERGY][batch[K.ATOM_TYPES] == 1].abs().max() == 0


@pytest.mark.parametrize("config, message", [
    ({"descriptor": dict(SE_A, rcut_smoth=0.5)}, r"model/descriptor/rcut_smoth: unknown key \(did you mean 'rcut_smth'\?\)"),
    ({"descriptor": dict(SE_A, type="se_e2_aa")}, r"unknown descriptor 'se_e2_aa'.*did you mean 'se_e2_a'"),
    ({"fitting_net": {"neuron": [8], "dim_case_embd": 2}}, r"not supported yet: model/fitting_net/dim_case_embd"),
    ({"use_srtab": "table.txt"}, r"model/smin_alpha: required with use_srtab"),
    ({"descriptor": dict(SE_A, sel="auto")}, r"model/descriptor/sel: 'auto' needs the neighbour statistics of the training data"),
    ({"descriptor": dict(SE_A, sel=[1, 2, 3])}, r"model/descriptor/sel: has 3 entries but type_map has 2 types"),
    ({"fitting_net": {"type": "dipole", "neuron": [8]}, "descriptor": SE_R}, r"needs a descriptor with an equivariant block"),
])
def test_build_model_errors(config, message):
    section = {"type_map": ["A", "B"], "descriptor": SE_A, "fitting_net": {"neuron": [8]}, "_comment": "ignored"}
    section.update(config)
    with pytest.raises(ConfigError, match=message):
        build_model(section)


def test_sel_auto_rule_and_config_round_trip():
    section = {"type_map": ["O", "H"], "descriptor": dict(SE_A, sel="auto"), "fitting_net": {"neuron": [8]}}
    resolved = resolve_auto_sel(section, [38, 72])
    assert resolved["descriptor"]["sel"] == [44, 80]  # spec §2.1
    assert resolve_auto_sel(dict(section, descriptor=dict(SE_A, sel="auto:1.0")), [38, 72])["descriptor"]["sel"] == [40, 72]
    model = build_model(resolved)
    rebuilt = build_model(model.config)
    rebuilt.load_state_dict(model.state_dict())
    batch = T.random_batch(1, 6, seed=1)
    torch.testing.assert_close(model(batch)[K.ENERGY], rebuilt(batch)[K.ENERGY])


SE_E3 = {"type": "se_e3", "sel": [12, 12], "rcut": 3.0, "rcut_smth": 0.5, "neuron": [4, 8], "seed": 4}
SE_ATTEN = {"type": "se_atten", "sel": 24, "rcut": 3.0, "rcut_smth": 0.5, "neuron": [4, 8], "axis_neuron": 2,
            "attn": 8, "attn_layer": 1, "seed": 5}


@pytest.mark.parametrize("descriptor", [SE_A, SE_R, SE_E3, SE_ATTEN, dict(SE_ATTEN, type="se_atten_v2"),
                                        {"type": "hybrid", "list": [SE_A, SE_R]}],
                         ids=["se_e2_a", "se_e2_r", "se_e3", "se_atten", "se_atten_v2", "hybrid"])
def test_frames_without_any_neighbour(descriptor):
    """A batch with no edge at all (atoms farther apart than rcut) evaluates: each atom then has
    its isolated-atom energy (padding only), forces vanish, and in a batch with an ordinary frame
    both frames keep their single-frame values."""
    from mlpot.models.derivatives import compute_derivatives

    model = model_for(descriptor, {"neuron": [8], "seed": 2})
    lonely = T.random_batch(1, 3, box=30.0, seed=1)
    assert lonely[K.EDGE_INDEX].shape[1] == 0
    out = compute_derivatives(model, lonely, virial=True)
    assert torch.isfinite(out[K.ENERGY]).all()
    torch.testing.assert_close(out[K.FORCES], torch.zeros_like(out[K.FORCES]))
    types = lonely[K.ATOM_TYPES]
    for t in (0, 1):  # one isolated-atom energy per type
        energies = out[K.ATOM_ENERGY][types == t]
        torch.testing.assert_close(energies, energies[:1].expand_as(energies), atol=1e-12, rtol=0)
    mixed = T.random_batch(2, [3, 8], box=[30.0, 5.0], seed=1)  # frame 0 has no neighbours, frame 1 has
    T.assert_batch_consistent(model, mixed, atol=1e-10, rtol=1e-10)


def _three_type_energy_batch():
    """Four frames of 8 atoms with three types and energies from known per-type values plus noise."""
    batch = T.random_batch(4, 8, n_types=3, seed=11)
    counts = torch.zeros(4, 3, dtype=torch.float64)
    counts.index_put_((batch[K.BATCH], batch[K.ATOM_TYPES]), torch.ones(32, dtype=torch.float64), accumulate=True)
    noise = torch.tensor([0.3, -0.2, 0.1, -0.25], dtype=torch.float64)
    batch[K.ENERGY] = counts @ torch.tensor([-2.0, -5.0, -7.0], dtype=torch.float64) + noise
    return batch, counts


def test_preset_out_bias_is_fixed_and_the_rest_is_the_constrained_least_squares():
    batch, counts = _three_type_energy_batch()
    assert np.linalg.matrix_rank(counts.numpy()) == 3  # a well-posed fit without the preset
    fitting = {"neuron": [8], "seed": 4, "preset_out_bias": [None, -4.5, None]}
    model = build_model({"type_map": ["A", "B", "C"], "descriptor": dict(SE_A, sel=[8, 8, 8]), "fitting_net": fitting})
    model.compute_statistics([batch])
    bias = model.fitting.bias_atom[:, 0].numpy()
    # hand: b_B = -4.5 is fixed; (b_A, b_C) solve the normal equations of E - 4.5 n_B ≈ n_A b_A + n_C b_C
    n = counts.numpy()
    target = batch[K.ENERGY].numpy() - n[:, 1] * -4.5
    free = n[:, [0, 2]]
    expected = np.linalg.solve(free.T @ free, free.T @ target)
    assert bias[1] == -4.5
    np.testing.assert_allclose(bias[[0, 2]], expected, rtol=1e-10)
    unconstrained = np.linalg.lstsq(n, batch[K.ENERGY].numpy(), rcond=None)[0]
    assert abs(unconstrained[1] + 4.5) > 0.1  # the preset really constrained the fit

    # unlike atom_ener, the net's vacuum output is not removed (DeePMD-kit PT only sets the bias):
    # with set_davg_zero an isolated B atom has D = 0 and energy net_B(0) + preset, not the preset
    vacuum = build_model({"type_map": ["A", "B", "C"], "descriptor": dict(SE_A, sel=[8, 8, 8], set_davg_zero=True),
                          "fitting_net": fitting})
    vacuum.compute_statistics([batch])
    single = T.random_batch(1, 1, n_types=3, periodic=False, seed=1)
    single[K.ATOM_TYPES] = torch.tensor([1])
    net_at_zero = vacuum.fitting.net_outputs(torch.zeros(1, vacuum.fitting.dim_descrpt, dtype=torch.float64),
                                             torch.tensor([1]))
    energy = vacuum(single)[K.ENERGY]
    torch.testing.assert_close(energy, net_at_zero[:, 0].detach() - 4.5)
    assert abs(float(net_at_zero.detach())) > 1e-3


def test_preset_out_bias_survives_refit_and_rejects_bad_input():
    batch, counts = _three_type_energy_batch()
    model = build_model({"type_map": ["A", "B", "C"], "descriptor": dict(SE_A, sel=[8, 8, 8]),
                         "fitting_net": {"neuron": [8], "seed": 4, "preset_out_bias": [[-1.5], None, None]}})
    model.compute_statistics([batch])
    residual = dict(batch, **{K.ENERGY: counts @ torch.tensor([0.4, 0.1, -0.3], dtype=torch.float64)})
    before = model.fitting.bias_atom.clone()
    from mlpot.models.output_bias import shift_by_residual

    shift = shift_by_residual(model.output_bias(), [batch], [residual[K.ENERGY]])
    assert shift[0, 0] == 0.0 and model.fitting.bias_atom[0, 0] == -1.5  # the preset type is left alone
    n = counts.numpy()
    expected = np.linalg.lstsq(n[:, 1:], residual[K.ENERGY].numpy(), rcond=None)[0]
    np.testing.assert_allclose(shift[1:, 0], expected, rtol=1e-10)
    torch.testing.assert_close(model.fitting.bias_atom[1:, 0] - before[1:, 0], torch.as_tensor(expected))
    for bad, message in (([None, -1.0], "one entry"), ([None, "x", None], "could not convert|finite"),
                         ([None, [1.0, 2.0], None], "expected 1 finite")):
        with pytest.raises((ConfigError, ValueError), match=message):
            build_model({"type_map": ["A", "B", "C"], "descriptor": dict(SE_A, sel=[8, 8, 8]),
                         "fitting_net": {"neuron": [8], "preset_out_bias": bad}})
    with pytest.raises(ConfigError, match="both atom_ener and preset_out_bias"):
        build_model({"type_map": ["A", "B", "C"], "descriptor": dict(SE_A, sel=[8, 8, 8]),
                     "fitting_net": {"neuron": [8], "atom_ener": [1.0], "preset_out_bias": [2.0, None, None]}})


def test_sel_auto_of_mixed_type_descriptors_counts_all_neighbours_together(shared_data):
    """se_atten / DPA-1 and se_e3_tebd resolve "auto" from the largest total neighbour count of one
    atom (DeePMD-kit's mixed-type neighbour statistics, `neighbor-stat --mixed-type`), which is
    smaller than the sum of the per-type maxima; se_e2_a keeps one count per type."""
    from mlpot.commands.neighbor_stat import neighbor_stat
    from mlpot.models.deepmd.data_hooks import resolve_from_data
    from mlpot.data import compute_statistics, read_systems

    system = shared_data("deepmd_water/data_3")
    _, (total,), _ = neighbor_stat([system], 6.0, ["O", "H"], mixed_type=True)
    _, per_type, _ = neighbor_stat([system], 6.0, ["O", "H"])
    assert total < sum(per_type)

    class Probe:
        def statistics(self, cutoff, type_map):
            return compute_statistics(read_systems([system], type_map=type_map), type_map, cutoff=cutoff)

    for kind in ("se_atten", "dpa1", "se_e3_tebd"):
        section = {"type_map": ["O", "H"], "descriptor": {"type": kind, "sel": "auto", "rcut": 6.0},
                   "fitting_net": {"neuron": [8]}}
        assert resolve_from_data(section, {"": Probe()})["descriptor"]["sel"] == math.ceil(total * 1.1 / 4) * 4
    section = {"type_map": ["O", "H"], "descriptor": dict(SE_A, sel="auto:1.0", rcut=6.0), "fitting_net": {"neuron": [8]}}
    assert resolve_from_data(section, {"": Probe()})["descriptor"]["sel"] == [math.ceil(n / 4) * 4 for n in per_type]
