"""DeePMD ``tensor`` and ``dos`` losses: front-end mapping and the cumulative (cdf) loss term."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from mlpot.config import deepmd
from mlpot.config import validate_config
from mlpot.training.schema import LossTerm
from mlpot.data import keys as K
from mlpot.errors import ConfigError
from mlpot.training.losses import WeightedLoss

WATER_INPUT = Path(__file__).resolve().parents[1] / "examples" / "deepmd_water" / "input.json"


@pytest.fixture
def water_input(shared_data):
    config = json.loads(WATER_INPUT.read_text())
    config["training"]["training_data"]["systems"] = [str(shared_data("deepmd_water/data_0"))]
    config["training"]["validation_data"]["systems"] = [str(shared_data("deepmd_water/data_3"))]
    return config


def _dos_batch(seed=0):
    """Two frames (2 and 3 atoms), 5 DOS bins; predictions and labels random."""
    g = torch.Generator().manual_seed(seed)
    n_atoms = torch.tensor([2, 3])
    batch = {
        K.N_ATOMS: n_atoms, K.BATCH: torch.repeat_interleave(torch.arange(2), n_atoms),
        K.DOS: torch.randn(2, 5, generator=g, dtype=torch.float64),
        K.ATOM_DOS: torch.randn(5, 5, generator=g, dtype=torch.float64),
        K.weight_key(K.DOS): torch.ones(2, dtype=torch.float64),
        K.weight_key(K.ATOM_DOS): torch.ones(2, dtype=torch.float64),
    }
    pred = {K.DOS: torch.randn(2, 5, generator=g, dtype=torch.float64),
            K.ATOM_DOS: torch.randn(5, 5, generator=g, dtype=torch.float64)}
    return pred, batch


def test_cdf_terms_match_hand_computation():
    pred, batch = _dos_batch()
    loss = WeightedLoss({"dos_cdf": LossTerm(weight=2.0), "atom_dos_cdf": LossTerm(weight=1.0),
                         "dos": LossTerm(weight=1.0)})
    total, weighted, raw = loss(pred, batch)
    # hand: running sums along the energy axis, element by element
    cdf_pred = [[sum(row[: i + 1]) for i in range(5)] for row in pred[K.DOS].tolist()]
    cdf_label = [[sum(row[: i + 1]) for i in range(5)] for row in batch[K.DOS].tolist()]
    hand = sum((a - b) ** 2 for ra, rb in zip(cdf_pred, cdf_label) for a, b in zip(ra, rb)) / 10
    assert float(raw["dos_cdf"]) == pytest.approx(hand, rel=1e-12)
    acdf = torch.cumsum(pred[K.ATOM_DOS], 1) - torch.cumsum(batch[K.ATOM_DOS], 1)
    assert float(raw["atom_dos_cdf"]) == pytest.approx(float(acdf.square().mean()), rel=1e-12)
    assert float(raw["dos"]) == pytest.approx(float((pred[K.DOS] - batch[K.DOS]).square().mean()), rel=1e-12)
    assert float(total) == pytest.approx(2 * hand + float(raw["atom_dos_cdf"]) + float(raw["dos"]), rel=1e-12)


def test_cdf_of_frame_without_label_is_ignored():
    pred, batch = _dos_batch()
    batch[K.weight_key(K.DOS)] = torch.tensor([1.0, 0.0], dtype=torch.float64)
    _, _, raw = WeightedLoss({"dos_cdf": LossTerm()})(pred, batch)
    first = torch.cumsum(pred[K.DOS][0] - batch[K.DOS][0], 0)
    assert float(raw["dos_cdf"]) == pytest.approx(float(first.square().mean()), rel=1e-12)


def _tensor_input(water_input, fitting_type, **loss):
    config = copy.deepcopy(water_input)
    config["model"]["fitting_net"] = {"type": fitting_type, "neuron": [16], "sel_type": [0]}
    config["loss"] = {"type": "tensor", **loss}
    return config


@pytest.mark.parametrize("fitting_type,global_label,atomic_label", [
    ("dipole", K.DIPOLE, K.ATOMIC_DIPOLE), ("polar", K.POLARIZABILITY, K.ATOMIC_POLARIZABILITY)])
def test_tensor_loss_maps_to_constant_terms(water_input, fitting_type, global_label, atomic_label):
    native = deepmd.convert_dict(_tensor_input(water_input, fitting_type, pref=0.5, pref_atomic=2.0))
    terms = native["loss"]["terms"]
    assert terms[global_label] == {"weight": 0.5, "label": global_label, "atom_norm": "none"}
    assert terms[atomic_label] == {"weight": 2.0, "label": atomic_label, "atom_norm": "none"}
    config = validate_config(native)
    loss = WeightedLoss(config.loss.terms, config.loss.type)
    assert loss.prefactor(global_label, 0.01) == 0.5  # constants: no lr coupling
    # a zero prefactor switches the term off
    native = deepmd.convert_dict(_tensor_input(water_input, fitting_type, pref=0.0, pref_atomic=1.0))
    assert set(native["loss"]["terms"]) == {atomic_label}


def test_tensor_loss_errors(water_input):
    with pytest.raises(ConfigError, match="pref_atomic"):
        deepmd.convert_dict(_tensor_input(water_input, "dipole", pref=1.0))
    config = copy.deepcopy(water_input)
    config["loss"] = {"type": "tensor", "pref": 1.0, "pref_atomic": 1.0}
    with pytest.raises(ConfigError, match="dipole or polar"):
        deepmd.convert_dict(config)
    weighted = deepmd.convert_dict(_tensor_input(water_input, "dipole", pref=1.0, pref_atomic=1.0,
                                                 enable_atomic_weight=True))
    assert weighted["loss"]["terms"][K.ATOMIC_DIPOLE]["atom_weight"] is True


def test_dos_loss_maps_prefactors(water_input):
    config = copy.deepcopy(water_input)
    config["model"]["fitting_net"] = {"type": "dos", "numb_dos": 250, "neuron": [16]}
    config["loss"] = {"type": "dos", "start_pref_dos": 1.0, "limit_pref_dos": 0.5,
                      "start_pref_cdf": 100.0, "limit_pref_cdf": 1.0}
    native = deepmd.convert_dict(config)
    assert native["loss"]["terms"] == {
        "dos": {"start_pref": 1.0, "limit_pref": 0.5}, "dos_cdf": {"start_pref": 100.0, "limit_pref": 1.0},
        "atom_dos": {"start_pref": 1.0, "limit_pref": 1.0}}  # ados defaults to 1 -> 1; acdf off
    loss_config = validate_config(native).loss
    loss = WeightedLoss(loss_config.terms, loss_config.type)
    assert loss.prefactor("dos_cdf", 0.5) == pytest.approx(1.0 + 99.0 * 0.5)
    assert loss.labels == (K.DOS, K.ATOM_DOS)


# ---- ener loss options: loss_func mae, use_huber, f_use_norm, use_default_pf ----------------------


def _ener_batch():
    """Two frames (2 and 3 atoms): energies, forces, virials; fixed numbers for hand computation."""
    n_atoms = torch.tensor([2, 3])
    f64 = dict(dtype=torch.float64)
    batch = {K.N_ATOMS: n_atoms, K.BATCH: torch.repeat_interleave(torch.arange(2), n_atoms),
             K.ENERGY: torch.tensor([1.0, -2.0], **f64),
             K.FORCES: torch.zeros(5, 3, **f64),
             K.VIRIAL: torch.zeros(2, 3, 3, **f64)}
    for label in (K.ENERGY, K.FORCES, K.VIRIAL):
        batch[K.weight_key(label)] = torch.ones(2, **f64)
    force_error = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.005], [1.0, 2.0, 2.0], [0.0, -0.006, 0.0],
                                [0.0, 0.0, 0.0]], **f64)
    virial_error = torch.zeros(2, 3, 3, **f64)
    virial_error[0, 0, 0], virial_error[1, 2, 1] = 0.6, -0.009
    pred = {K.ENERGY: torch.tensor([1.5, -2.03], **f64), K.FORCES: force_error, K.VIRIAL: virial_error}
    return pred, batch


def _ener_loss(water_input, **options):
    config = copy.deepcopy(water_input)
    config["loss"] = {"type": "ener", "start_pref_e": 1.0, "limit_pref_e": 1.0, "start_pref_f": 1.0,
                      "limit_pref_f": 1.0, "start_pref_v": 1.0, "limit_pref_v": 1.0, **options}
    loss_config = validate_config(deepmd.convert_dict(config)).loss
    return WeightedLoss(loss_config.terms, loss_config.type, loss_config.intensive_ener_virial)


def _huber(r, delta):
    r = abs(r)
    return 0.5 * r * r if r <= delta else delta * (r - 0.5 * delta)


def test_mae_terms_match_hand_computation(water_input):
    pred, batch = _ener_batch()
    _, _, raw = _ener_loss(water_input, loss_func="mae")(pred, batch)
    # energy |ΔE|/N: frame 0 0.5/2, frame 1 0.03/3
    assert float(raw["energy"]) == pytest.approx((0.25 + 0.01) / 2, rel=1e-12)
    # forces: mean |ΔF| over the 15 components
    assert float(raw["forces"]) == pytest.approx((3 + 4 + 0.005 + 1 + 2 + 2 + 0.006) / 15, rel=1e-12)
    # virial |ΔΞ|/N over 18 components
    assert float(raw["virial"]) == pytest.approx((0.6 / 2 + 0.009 / 3) / 18, rel=1e-12)


def test_mae_with_f_use_norm_compares_per_atom_force_norms(water_input):
    pred, batch = _ener_batch()
    _, _, raw = _ener_loss(water_input, loss_func="mae", f_use_norm=True)(pred, batch)
    # |ΔF_k| = 5, 0.005, 3, 0.006, 0 over 5 atoms
    assert float(raw["forces"]) == pytest.approx((5 + 0.005 + 3 + 0.006 + 0) / 5, rel=1e-12)


def test_huber_terms_match_hand_computation(water_input):
    pred, batch = _ener_batch()
    _, _, raw = _ener_loss(water_input, use_huber=True, huber_delta=0.01)(pred, batch)
    assert float(raw["energy"]) == pytest.approx((_huber(0.25, 0.01) + _huber(0.01, 0.01)) / 2, rel=1e-12)
    components = [3, 4, 0.005, 1, 2, 2, 0.006] + [0] * 8
    assert float(raw["forces"]) == pytest.approx(sum(_huber(c, 0.01) for c in components) / 15, rel=1e-12)
    virial = [0.6 / 2, 0.009 / 3] + [0] * 16
    assert float(raw["virial"]) == pytest.approx(sum(_huber(c, 0.01) for c in virial) / 18, rel=1e-12)
    # per-term deltas [energy, force, virial] and the force norm
    _, _, raw = _ener_loss(water_input, use_huber=True, huber_delta=[0.5, 1.0, 0.1], f_use_norm=True)(pred, batch)
    assert float(raw["energy"]) == pytest.approx((_huber(0.25, 0.5) + _huber(0.01, 0.5)) / 2, rel=1e-12)
    norms = [5, 0.005, 3, 0.006, 0]
    assert float(raw["forces"]) == pytest.approx(sum(_huber(n, 1.0) for n in norms) / 5, rel=1e-12)
    assert float(raw["virial"]) == pytest.approx(sum(_huber(c, 0.1) for c in virial) / 18, rel=1e-12)


def test_f_use_norm_gradient_is_finite_at_zero_error(water_input):
    pred, batch = _ener_batch()
    pred[K.FORCES] = pred[K.FORCES].clone().requires_grad_(True)
    total, _, _ = _ener_loss(water_input, loss_func="mae", f_use_norm=True)(pred, batch)
    total.backward()
    assert torch.isfinite(pred[K.FORCES].grad).all()


def test_use_default_pf_weighs_atoms_one_without_atom_pref(water_input):
    pred, batch = _ener_batch()
    pf = {"start_pref_f": 0.0, "limit_pref_f": 0.0, "start_pref_pf": 1.0, "limit_pref_pf": 1.0}
    components = [3, 4, 0.005, 1, 2, 2, 0.006] + [0] * 8
    _, _, raw = _ener_loss(water_input, use_default_pf=True, **pf)(pred, batch)
    assert float(raw["atom_pref"]) == pytest.approx(sum(c * c for c in components) / 15, rel=1e-12)
    # without use_default_pf a batch without atom_pref does not count (DeePMD find_atom_pref = 0)
    _, _, raw = _ener_loss(water_input, **pf)(pred, batch)
    assert "atom_pref" not in raw
    # with atom_pref data: mean over components of pref · ΔF² (prefs weigh the numerator only)
    batch[K.ATOM_PREF] = torch.tensor([2.0, 1.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    prefs = [2.0] * 3 + [1.0] * 3 + [0.5] * 3 + [1.0] * 3 + [3.0] * 3
    flat = [3, 4, 0, 0, 0, 0.005, 1, 2, 2, 0, -0.006, 0, 0, 0, 0]
    hand = sum(p * c * c for p, c in zip(prefs, flat)) / 15
    for options in ({}, {"use_default_pf": True}):
        _, _, raw = _ener_loss(water_input, **options, **pf)(pred, batch)
        assert float(raw["atom_pref"]) == pytest.approx(hand, rel=1e-12)
    _, _, raw = _ener_loss(water_input, loss_func="mae", **pf)(pred, batch)
    assert float(raw["atom_pref"]) == pytest.approx(sum(p * abs(c) for p, c in zip(prefs, flat)) / 15, rel=1e-12)


@pytest.mark.parametrize("options,key,message", [
    ({"f_use_norm": True}, "f_use_norm", "needs loss_func 'mae' or use_huber"),
    ({"loss_func": "l1"}, "loss_func", "expected 'mse' or 'mae'"),
    ({"use_huber": True, "loss_func": "mae"}, "use_huber", "needs loss_func 'mse'"),
    ({"use_huber": True, "relative_f": 0.1}, "use_huber", "pf, gf or h terms or relative_f"),
    ({"use_huber": True, "start_pref_pf": 1.0, "limit_pref_pf": 1.0}, "use_huber", "pf, gf or h terms"),
    ({"use_huber": True, "huber_delta": [0.1, 0.2]}, "huber_delta", "list \\[energy, force, virial\\]"),
])
def test_invalid_loss_option_combinations_name_the_key(water_input, options, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        _ener_loss(water_input, **options)
    assert key in str(info.value)
