"""DeePMD-kit keys built late: atom_ener_coeff, generalised force (gf), enable_atomic_weight, warm-up,
``batch_size: "mixed:N"`` and se_atten ``attn_mask`` (spec deepmd.md §1.1, §1.4, §2.6, §4.1-4.3, §5.2).

Loss terms are checked against hand-computed values on tiny batches (with find_* gating), the
warm-up against the spec's formula, the mixed sampler for content, determinism and resume, and one
``mlpot train input.json`` run uses several of the keys on synthetic molecules written here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mlpot import testing as T
from mlpot.cli import main
from mlpot.config import deepmd, validate_config
from mlpot.training.schema import LossTerm
from mlpot.data import SystemSampler, collate
from mlpot.data.deepmd_format import read_deepmd
from mlpot.data import keys as K
from mlpot.data.frames import FrameList
from mlpot.errors import ConfigError, DataError
from mlpot.models import build_model
from mlpot.models.deepmd.descriptors.se_atten import NeighborAttentionLayer
from mlpot.training.losses import GENERALIZED_FORCE, WeightedLoss
from mlpot.training.metrics import label_error_sums, rmse_mae

# ---- tiny hand-made batches ----------------------------------------------------------------------


def _batch(n_atoms=(2, 3), seed=0):
    """Two frames (2 and 3 atoms) with random forces, atom energies, labels and all weights 1."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.tensor(n_atoms)
    total = int(counts.sum())
    batch = {
        K.N_ATOMS: counts, K.BATCH: torch.repeat_interleave(torch.arange(len(n_atoms)), counts),
        K.ENERGY: torch.randn(len(n_atoms), generator=g, dtype=torch.float64),
        K.FORCES: torch.randn(total, 3, generator=g, dtype=torch.float64),
        K.ATOMIC_DIPOLE: torch.randn(total, 3, generator=g, dtype=torch.float64),
    }
    for label in (K.ENERGY, K.FORCES, K.ATOMIC_DIPOLE):
        batch[K.weight_key(label)] = torch.ones(len(n_atoms), dtype=torch.float64)
    pred = {K.ATOM_ENERGY: torch.randn(total, generator=g, dtype=torch.float64),
            K.FORCES: torch.randn(total, 3, generator=g, dtype=torch.float64),
            K.ATOMIC_DIPOLE: torch.randn(total, 3, generator=g, dtype=torch.float64)}
    pred[K.ENERGY] = torch.stack([pred[K.ATOM_ENERGY][:2].sum(), pred[K.ATOM_ENERGY][2:].sum()])
    return pred, batch


def test_atom_ener_coeff_energy_is_coefficient_weighted_sum():
    pred, batch = _batch()
    coeff = [1.0, -1.0, 0.5, 2.0, -0.25]
    batch[K.ATOM_ENER_COEFF] = torch.tensor(coeff, dtype=torch.float64)
    batch[K.weight_key(K.ENERGY)] = torch.tensor([1.0, 0.0], dtype=torch.float64)  # frame 1: no energy label
    loss = WeightedLoss({"energy": LossTerm(start_pref=0.02, limit_pref=1.0)}, "ener", atom_ener_coeff=True)
    prepared = loss.prepare(pred, batch)
    e_atom = pred[K.ATOM_ENERGY].tolist()
    hand_energy = [coeff[0] * e_atom[0] + coeff[1] * e_atom[1], sum(c * e for c, e in zip(coeff[2:], e_atom[2:]))]
    assert prepared[K.ENERGY].tolist() == pytest.approx(hand_energy, rel=1e-12)
    assert pred[K.ENERGY][0] != pytest.approx(hand_energy[0])  # the plain sum differs
    total, _, raw = loss(prepared, batch, lr_ratio=0.5)
    # legacy DeePMD energy term ΔE²/N over frames with the label: frame 0 only, N = 2
    hand = (hand_energy[0] - float(batch[K.ENERGY][0])) ** 2 / 2
    assert float(raw["energy"]) == pytest.approx(hand, rel=1e-12)
    assert float(total) == pytest.approx((1.0 + (0.02 - 1.0) * 0.5) * hand, rel=1e-12)
    assert WeightedLoss({"energy": LossTerm()}, "ener").prepare(pred, batch) is pred  # option off


def test_generalized_force_term_hand_computed_with_drdq_gating():
    pred, batch = _batch()
    n_gen = 2
    g = torch.Generator().manual_seed(3)
    drdq = torch.randn(5, 3 * n_gen, generator=g, dtype=torch.float64)  # (n_atoms, 3 * n_gen)
    batch[K.DRDQ] = drdq
    batch[K.weight_key(K.DRDQ)] = torch.tensor([1.0, 1.0], dtype=torch.float64)
    loss = WeightedLoss({"generalized_force": LossTerm(start_pref=10.0, limit_pref=2.0, n_generalized=n_gen)}, "ener")
    assert loss.labels == (K.FORCES,) and loss.gated_inputs == (K.DRDQ,)

    def hand_generalized(frame_atoms):
        """Σ_i Σ_a drdq[i, a * n_gen + j] (F - F*)[i, a] per generalised coordinate j (DeePMD layout)."""
        out = []
        for j in range(n_gen):
            out.append(sum(float(drdq[i, a * n_gen + j]) * float(pred[K.FORCES][i, a] - batch[K.FORCES][i, a])
                           for i in frame_atoms for a in range(3)))
        return out

    both = hand_generalized([0, 1]) + hand_generalized([2, 3, 4])
    total, _, raw = loss(pred, batch, lr_ratio=0.25)
    assert float(raw["generalized_force"]) == pytest.approx(sum(x * x for x in both) / 4, rel=1e-12)
    # the lcurve metric (rmse_gf) is the RMSE of the same generalised-force residuals
    assert loss.metric_labels == (K.FORCES, GENERALIZED_FORCE)
    rmse, mae = rmse_mae(label_error_sums(pred, batch, loss.metric_labels)[GENERALIZED_FORCE])
    assert rmse == pytest.approx((sum(x * x for x in both) / 4) ** 0.5, rel=1e-12)
    assert mae == pytest.approx(sum(abs(x) for x in both) / 4, rel=1e-12)
    assert float(total) == pytest.approx((2.0 + 8.0 * 0.25) * float(raw["generalized_force"]), rel=1e-12)
    # find_drdq = 0 in frame 1 (and frame 0 without force labels): no contribution, no dilution
    batch[K.weight_key(K.DRDQ)] = torch.tensor([1.0, 0.0], dtype=torch.float64)
    _, _, raw = loss(pred, batch)
    assert float(raw["generalized_force"]) == pytest.approx(sum(x * x for x in both[:2]) / 2, rel=1e-12)
    batch[K.weight_key(K.FORCES)] = torch.tensor([0.0, 1.0], dtype=torch.float64)
    _, _, raw = loss(pred, batch)
    assert "generalized_force" not in raw


def test_atomic_weight_multiplies_atomic_residuals():
    pred, batch = _batch()
    weights = [0.5, 2.0, 1.0, 0.0, 3.0]
    batch[K.ATOM_WEIGHT] = torch.tensor(weights, dtype=torch.float64)
    batch[K.weight_key(K.ATOMIC_DIPOLE)] = torch.tensor([1.0, 0.0], dtype=torch.float64)
    term = LossTerm(weight=2.0, label=K.ATOMIC_DIPOLE, atom_norm="none", atom_weight=True)
    loss = WeightedLoss({K.ATOMIC_DIPOLE: term})
    assert loss.required_inputs == (K.ATOM_WEIGHT,)
    total, _, raw = loss(pred, batch)
    diff = (pred[K.ATOMIC_DIPOLE] - batch[K.ATOMIC_DIPOLE]).tolist()
    # DeePMD multiplies the difference by w: squared errors scale by w²; frame 0 only (atoms 0, 1)
    hand = sum((weights[i] * d) ** 2 for i in (0, 1) for d in diff[i]) / 6
    assert float(raw[K.ATOMIC_DIPOLE]) == pytest.approx(hand, rel=1e-12)
    assert float(total) == pytest.approx(2.0 * hand, rel=1e-12)
    with pytest.raises(ConfigError, match="atom_weight applies to atomic labels"):
        WeightedLoss({"energy": LossTerm(atom_weight=True)})


def _frames(n_frames, n_atoms, keys=()):
    frames = FrameList(source="sysA")
    for _ in range(n_frames):
        frame = {K.POSITIONS: np.zeros((n_atoms, 3))}
        for key, width in keys:
            frame[key] = np.ones((n_atoms, width)) if width else np.ones(n_atoms)
        frames.append(frame)
    return frames


def test_missing_inputs_raise_data_errors_naming_system_and_key():
    coeff_loss = WeightedLoss({"energy": LossTerm()}, "ener", atom_ener_coeff=True)
    with pytest.raises(DataError, match=r"sysA: atom_ener_coeff: no atom_ener_coeff\.npy .*enable_atom_ener_coeff"):
        coeff_loss.check_data(_frames(2, 3))
    coeff_loss.check_data(_frames(2, 3, [(K.ATOM_ENER_COEFF, 0)]))
    gf_loss = WeightedLoss({"generalized_force": LossTerm(n_generalized=2)}, "ener")
    with pytest.raises(DataError, match=r"sysA: drdq: no system has drdq\.npy"):
        gf_loss.check_data(_frames(2, 3))
    with pytest.raises(DataError, match=r"sysA: frame 0: drdq: has 3 values per atom, expected 3 x "
                                        r"numb_generalized_coord = 6"):
        gf_loss.check_data(_frames(2, 3, [(K.DRDQ, 3)]))
    gf_loss.check_data(_frames(2, 3, [(K.DRDQ, 6)]))


# ---- synthetic DeePMD systems ----------------------------------------------------------------------


def _pair_energy_forces(positions):
    """E = Σ_{i<j} (r_ij - 1.4)² eV (r in Å) and its forces: a smooth, cheap label for molecules."""
    vectors = positions[None, :, :] - positions[:, None, :]
    distance = np.linalg.norm(vectors, axis=-1) + np.eye(len(positions))
    stretch = np.where(np.eye(len(positions), dtype=bool), 0.0, distance - 1.4)
    energy = 0.5 * float((stretch ** 2).sum())
    # dE/dx_i = -Σ_j 2 (r_ij - 1.4) (x_j - x_i)/r_ij
    forces = 2.0 * ((stretch / distance)[:, :, None] * vectors).sum(axis=1)
    return energy, forces


def write_system(path, n_atoms, n_frames, *, seed, sets=1, coeff=False, drdq_gen=0, drdq_sets=None):
    """A non-periodic DeePMD npy system of ``n_atoms`` atoms (types alternate C/H) with energies and
    forces of the pair potential above; optional atom_ener_coeff.npy and drdq.npy (n_gen coords)."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    np.savetxt(path / "type.raw", np.arange(n_atoms) % 2, fmt="%d")
    (path / "type_map.raw").write_text("C\nH\n")
    (path / "nopbc").touch()
    grid = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3) * 1.3
    per_set = n_frames // sets
    for s in range(sets):
        folder = path / f"set.{s:03d}"
        folder.mkdir()
        coords = np.stack([grid[:n_atoms] + rng.uniform(-0.15, 0.15, (n_atoms, 3)) for _ in range(per_set)])
        labels = [_pair_energy_forces(c) for c in coords]
        np.save(folder / "coord.npy", coords.reshape(per_set, -1))
        np.save(folder / "energy.npy", np.array([e for e, _ in labels]))
        np.save(folder / "force.npy", np.stack([f for _, f in labels]).reshape(per_set, -1))
        if coeff:
            np.save(folder / "atom_ener_coeff.npy", rng.choice([1.0, 0.5], size=(per_set, n_atoms)))
        if drdq_gen and (drdq_sets is None or s in drdq_sets):
            np.save(folder / "drdq.npy", rng.normal(size=(per_set, n_atoms * 3 * drdq_gen)))
    return path


def test_reader_collate_gate_drdq_per_set_and_default_coefficients(tmp_path):
    system = write_system(tmp_path / "sys", 4, 4, seed=0, sets=2, coeff=True, drdq_gen=2, drdq_sets=[0])
    frames = read_deepmd(system, type_map=["C", "H"])
    assert frames[0][K.DRDQ].shape == (4, 6) and K.DRDQ not in frames[3]
    assert frames[0][K.ATOM_ENER_COEFF].shape == (4,)
    raw = np.load(system / "set.000" / "drdq.npy")
    np.testing.assert_array_equal(frames[1][K.DRDQ].reshape(-1), raw[1])  # per atom: 3 x n_gen, row-major
    batch = collate([frames[1], frames[2]])
    assert batch[K.weight_key(K.DRDQ)].tolist() == [1.0, 0.0]
    assert torch.all(batch[K.DRDQ][4:] == 0)
    plain = {k: v for k, v in frames[2].items() if k != K.ATOM_ENER_COEFF}
    mixed = collate([frames[0], plain])
    assert torch.all(mixed[K.ATOM_ENER_COEFF][4:] == 1.0)  # the default of a frame without the file


# ---- mixed:N sampler ---------------------------------------------------------------------------------


def test_mixed_batches_draw_n_frames_across_systems_deterministically_and_resume():
    sizes = [5, 3, 10]
    sampler = SystemSampler(sizes, "mixed:4", n_atoms=[7, 10, 8], seed=11)
    # prob_sys_size with batch size 4 per system: batches 2, 1, 3 (DeePMD rule)
    np.testing.assert_allclose(sampler.probabilities, [2 / 6, 1 / 6, 3 / 6])
    assert len(sampler) == 5  # ceil(18 / 4) batches per nominal epoch
    offsets = np.cumsum([0] + sizes)
    batches = [sampler.next_batch() for _ in range(3000)]
    assert all(len(b) == 4 and all(0 <= i < 18 for i in b) for b in batches)
    systems_per_batch = [len(set(np.searchsorted(offsets, b, side="right") - 1)) for b in batches]
    assert max(systems_per_batch) == 3 and np.mean(systems_per_batch) > 1.5
    drawn = np.bincount(np.searchsorted(offsets, np.concatenate(batches), side="right") - 1, minlength=3)
    np.testing.assert_allclose(drawn / drawn.sum(), [2 / 6, 1 / 6, 3 / 6], atol=0.02)
    # every system is walked through without repetition before it is reshuffled
    first = [i for b in batches for i in b if 8 <= i < 18][:10]
    assert sorted(first) == list(range(8, 18))
    again = SystemSampler(sizes, "mixed:4", n_atoms=[7, 10, 8], seed=11)
    assert [again.next_batch() for _ in range(50)] == batches[:50]
    state = json.loads(json.dumps(again.state_dict()))
    resumed = SystemSampler(sizes, "mixed:4", n_atoms=[7, 10, 8], seed=0)
    resumed.load_state_dict(state)
    assert [resumed.next_batch() for _ in range(20)] == batches[50:70]


def test_mixed_batch_size_in_native_schema(tmp_path):
    config = deepmd.convert_dict(_input(tmp_path, batch_size="mixed:3"), base_dir=tmp_path)
    assert config["data"]["train"]["batch_size"] == "mixed:3"
    validate_config(config)
    config["data"]["train"]["batch_size"] = "mixed:x"
    with pytest.raises(ConfigError, match="mixed:N"):
        validate_config(config)


# ---- se_atten attn_mask ------------------------------------------------------------------------------


def test_attention_mask_removes_self_attention():
    """One slot: with the diagonal masked nothing is attended, so the layer is LayerNorm(g + out bias)."""
    layer = NeighborAttentionLayer(4, 6, mask_diagonal=True, dotr=False, generator=torch.Generator().manual_seed(0))
    g = torch.randn(3, 1, 4, dtype=torch.float64)
    mask, sw = torch.ones(3, 1, dtype=torch.bool), torch.ones(3, 1, dtype=torch.float64)
    out = layer(g, mask, sw, torch.zeros(3, 1, 3, dtype=torch.float64))
    expected = torch.nn.functional.layer_norm(g + layer.out_proj(torch.zeros(3, 1, 6, dtype=torch.float64)), (4,),
                                              layer.ln_weight, layer.ln_bias, layer.ln_eps)
    torch.testing.assert_close(out, expected)
    layer.mask_diagonal = False
    assert not torch.allclose(layer(g, mask, sw, torch.zeros(3, 1, 3, dtype=torch.float64)), expected)


@pytest.mark.parametrize("descriptor_type", ["se_atten", "se_atten_v2"])
def test_attn_mask_changes_energy_and_keeps_forces_conservative(descriptor_type):
    def model(attn_mask):
        section = {"type": descriptor_type, "sel": 24, "rcut": 3.5, "rcut_smth": 1.0, "neuron": [4, 8],
                   "axis_neuron": 3, "attn": 6, "attn_layer": 2, "tebd_dim": 3, "seed": 1, "attn_mask": attn_mask}
        built = build_model({"type_map": ["A", "B"], "descriptor": section, "fitting_net": {"neuron": [8], "seed": 2}})
        built.compute_statistics([T.random_batch(2, 8, seed=5)])
        return built

    batch = T.random_batch(2, [8, 7], seed=1)
    plain, masked = model(False), model(True)
    masked.load_state_dict(plain.state_dict())
    difference = (masked(batch)[K.ENERGY] - plain(batch)[K.ENERGY]).abs()
    assert float(difference.detach().min()) > 1e-6
    T.assert_forces_match_fd(masked, batch, atol=1e-7, rtol=1e-5)


# ---- input.json end to end -----------------------------------------------------------------------------


def _input(tmp_path, **data):
    systems = [str(write_system(tmp_path / f"sys{n}", n, 6, seed=n, coeff=True, drdq_gen=2))
               for n in (3, 4, 5)] if not (tmp_path / "sys3").exists() else [str(tmp_path / f"sys{n}") for n in (3, 4, 5)]
    return {
        "model": {"type_map": ["C", "H"],
                  "descriptor": {"type": "se_atten", "sel": 8, "rcut": 3.0, "rcut_smth": 1.0, "neuron": [4, 8],
                                 "axis_neuron": 2, "attn": 4, "attn_layer": 1, "tebd_dim": 2, "attn_mask": True,
                                 "seed": 1},
                  "fitting_net": {"neuron": [8], "seed": 2}, "data_stat_nbatch": 1},
        "learning_rate": {"type": "exp", "start_lr": 1e-3, "stop_lr": 1e-5, "decay_steps": 2,
                          "warmup_steps": 4, "warmup_start_factor": 0.1},
        "loss": {"type": "ener", "start_pref_e": 0.02, "limit_pref_e": 1.0, "start_pref_f": 100.0, "limit_pref_f": 1.0,
                 "enable_atom_ener_coeff": True, "start_pref_gf": 1.0, "limit_pref_gf": 0.5, "numb_generalized_coord": 2},
        "training": {"training_data": {"systems": systems, **data}, "numb_steps": 12, "seed": 3,
                     "disp_file": "lcurve.out", "disp_freq": 1, "save_freq": 12},
    }


def test_input_json_trains_with_mixed_batches_warmup_coefficients_gf_and_attn_mask(tmp_path, monkeypatch):
    config = _input(tmp_path, batch_size="mixed:4")
    (tmp_path / "input.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "input.json"]) == 0
    rows = np.loadtxt(tmp_path / "lcurve.out", ndmin=2)
    assert rows.shape[0] == 12 and np.all(np.isfinite(rows))
    header = (tmp_path / "lcurve.out").read_text().splitlines()[0].split()[1:]
    assert header == ["step", "rmse_trn", "rmse_e_trn", "rmse_f_trn", "rmse_gf_trn", "lr"]  # no validation data
    # lr column at displayed step s (internal t = s - 1): warm-up 1e-4 -> 1e-3 over 4 steps, then
    # 1e-3 · r^floor((t - 4) / 2) with r = (1e-5 / 1e-3)^(2 / 8) (T = 12 - 4), spec §4.1
    rate = (1e-5 / 1e-3) ** (2 / 8)
    expected = [1e-3 * (0.1 + 0.9 * t / 4) if t < 4 else 1e-3 * rate ** ((t - 4) // 2) for t in range(12)]
    np.testing.assert_allclose(rows[:, -1], expected, rtol=0.06)  # lcurve prints the lr as %8.1e
    assert "generalized_force:" in (tmp_path / "debug.log").read_text()  # the gf term was on


def test_warmup_keeps_prefactors_at_start_and_lr_follows_spec(tmp_path):
    from mlpot.training.optim import current_lr
    from mlpot.training.trainer import Trainer

    native = deepmd.convert_dict(_input(tmp_path, batch_size=1), base_dir=tmp_path)
    native["output_dir"] = str(tmp_path / "out")
    trainer = Trainer(validate_config(native), progress=False)
    trainer._enter_stage(0)
    rate = (1e-5 / 1e-3) ** (2 / 8)
    for t in range(8):
        expected = 1e-3 * (0.1 + 0.9 * t / 4) if t < 4 else 1e-3 * rate ** ((t - 4) // 2)
        assert current_lr(trainer.optimizer) == pytest.approx(expected, rel=1e-12)
        # DeePMD PT: the loss sees start_lr during warm-up, lr afterwards
        assert trainer._lr_ratio() == pytest.approx(1.0 if t < 4 else expected / 1e-3, rel=1e-12)
        trainer.train_step(metrics=False)


def test_warmup_front_end_errors(tmp_path):
    config = _input(tmp_path)
    config["learning_rate"]["warmup_ratio"] = 0.1
    with pytest.raises(ConfigError, match="warmup_steps or learning_rate/warmup_ratio, not both"):
        deepmd.convert_dict(config, base_dir=tmp_path)
    config = _input(tmp_path)
    config["training"]["warmup_steps"] = 3
    with pytest.raises(ConfigError, match="warm-up given twice"):
        deepmd.convert_dict(config, base_dir=tmp_path)
    config = _input(tmp_path)
    del config["learning_rate"]["warmup_steps"], config["learning_rate"]["warmup_start_factor"]
    config["training"]["warmup_steps"] = 3  # the older PT spelling: start factor 0
    schedule = deepmd.convert_dict(config, base_dir=tmp_path)["lr_schedule"]
    assert schedule["warmup_steps"] == 3 and schedule["warmup_start_factor"] == 0.0
    config["loss"]["numb_generalized_coord"] = 0
    with pytest.raises(ConfigError, match="numb_generalized_coord >= 1"):
        deepmd.convert_dict(config, base_dir=tmp_path)


def test_missing_coefficient_file_fails_at_set_up(tmp_path, monkeypatch):
    config = _input(tmp_path, batch_size=1)
    for path in (tmp_path / "sys4").rglob("atom_ener_coeff.npy"):
        path.unlink()
    (tmp_path / "input.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"sys4: atom_ener_coeff: no atom_ener_coeff\.npy"):
        from mlpot.training.trainer import Trainer

        Trainer(validate_config(deepmd.convert(tmp_path / "input.json")), progress=False)
