"""DeePMD-kit input keys built late: ``rglob_patterns`` (spec deepmd.md §5.1), ``default_fparam``,
``model_branch_alias`` / ``finetune_head`` and ``num_epoch_dict``.

Small synthetic systems (``write_system`` of the extra-keys tests); the expected values were checked
against DeePMD-kit 3.2 (PyTorch backend) where noted.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlpot.calculators.export import freeze, load_model
from mlpot.config import deepmd, validate_config
from mlpot.data import AtomsDataset, collate, read_systems
from mlpot.data import keys as K
from mlpot.errors import ConfigError
from mlpot.models import build_model
from tests.test_deepmd_extra_keys import write_system
from tests.test_deepmd_training_keys import small_deepmd_input


def _system_tree(root):
    """root/{a_4, deep/a_5, b_6, a_note/}: systems of 4, 5 and 6 atoms with 5, 3 and 7 frames; a_note
    has no type.raw (not a system)."""
    write_system(root / "a_4", 4, 5, seed=1)
    write_system(root / "deep" / "a_5", 5, 3, seed=2)
    write_system(root / "b_6", 6, 7, seed=3)
    (root / "a_note").mkdir()
    return root


def test_rglob_patterns_pick_the_matching_systems_below_the_root(tmp_path):
    """DeePMD-kit 3.2 (``process_systems``) on this tree: ["a_*"] gives a_4 and deep/a_5 (any depth,
    folders without type.raw skipped); the training run then sees their 5 + 3 frames only: batch 2 gives
    ceil(5/2) + ceil(3/2) = 5 batches per epoch (b_6 would add 4)."""
    from mlpot.training.trainer import Trainer

    _system_tree(tmp_path / "data")
    config = small_deepmd_input(tmp_path)
    config["training"]["training_data"] = {"systems": "data", "rglob_patterns": ["a_*"], "batch_size": 2}
    config["training"]["validation_data"] = {"systems": ["data"], "rglob_patterns": ["b_*", "nothing*"],
                                             "batch_size": 2}
    native = deepmd.convert_dict(config, base_dir=tmp_path)
    data = tmp_path / "data"
    assert native["data"]["train"]["paths"] == [str(data / "a_4"), str(data / "deep" / "a_5")]
    assert native["data"]["valid"]["paths"] == [str(data / "b_6")]
    native["output_dir"] = str(tmp_path / "out")
    trainer = Trainer(validate_config(native), progress=False)
    assert trainer.steps_per_epoch == 5
    config["training"]["training_data"]["rglob_patterns"] = None  # the plain search: all three systems
    config["training"].pop("validation_data")
    native = deepmd.convert_dict(config, base_dir=tmp_path)
    native["output_dir"] = str(tmp_path / "out2")
    assert Trainer(validate_config(native), progress=False).steps_per_epoch == 9


@pytest.mark.parametrize("patterns, match", [(["c_*"], "no system .folder with type.raw. matching"),
                                             ("a_*", "expected a non-empty list of glob patterns")])
def test_rglob_patterns_errors(tmp_path, patterns, match):
    _system_tree(tmp_path / "data")
    config = small_deepmd_input(tmp_path)
    config["training"]["training_data"] = {"systems": "data", "rglob_patterns": patterns, "batch_size": 2}
    with pytest.raises(ConfigError, match=match) as info:
        deepmd.convert_dict(config, base_dir=tmp_path)
    assert "training_data" in str(info.value) and "rglob_patterns" in str(info.value)


def _fparam_trainer(tmp_path, systems=("sys4", "sys5")):
    from mlpot.training.trainer import Trainer

    config = small_deepmd_input(tmp_path, numb_steps=2)
    config["model"]["fitting_net"].update(numb_fparam=1, default_fparam=[0.7])
    config["training"]["training_data"]["systems"] = list(systems)
    native = deepmd.convert_dict(config, base_dir=tmp_path)
    native["output_dir"] = str(tmp_path / "out")
    return Trainer(validate_config(native), progress=False)


def _energies(model, frames, fparam=None):
    """Energies (n_frames,) eV of ``frames`` (FrameList of one system); ``fparam`` (n_frames, 1) or None."""
    batch = collate(list(AtomsDataset([{k: v for k, v in f.items() if k != K.FPARAM} for f in frames],
                                      cutoff=model.cutoff)), dtype=torch.float64)
    if fparam is not None:
        batch[K.FPARAM] = torch.as_tensor(fparam, dtype=torch.float64)
    with torch.no_grad():
        return model(batch)[K.ENERGY].numpy()


def test_default_fparam_trains_without_fparam_npy_and_is_frozen_with_the_model(tmp_path):
    """No system has fparam.npy: the statistics see the default on every frame, fparam_avg 0.7 and
    fparam_inv_std 1/data_stat_protect = 100 (DeePMD-kit 3.2's checkpoint of this input holds the same
    numbers); training runs, and a frame without fparam gives the energy of fparam = 0.7 exactly, before
    and after freezing (inference without fparam, as DeePMD-kit's DeepPot)."""
    trainer = _fparam_trainer(tmp_path)
    trainer.run()
    fitting = trainer.model.fitting
    assert fitting.fparam_avg.tolist() == pytest.approx([0.7])
    assert fitting.fparam_inv_std.tolist() == pytest.approx([100.0])
    frames = read_systems([str(tmp_path / "sys5")], None, type_map=["C", "H"])[0]
    model = trainer.model.eval()
    default = _energies(model, frames)
    assert np.allclose(default, _energies(model, frames, [[0.7]] * 3), rtol=0, atol=1e-12)
    assert np.abs(default - _energies(model, frames, [[0.2]] * 3)).max() > 1e-4  # fparam does enter
    checkpoint = max((tmp_path / "out").rglob("*.pt"), key=lambda p: p.stat().st_mtime)
    freeze(checkpoint, tmp_path / "frozen.pt")
    frozen = load_model(tmp_path / "frozen.pt")
    assert frozen.fitting.default_fparam.tolist() == [0.7]
    assert np.allclose(_energies(frozen, frames), _energies(frozen, frames, [[0.7]] * 3), rtol=0, atol=1e-12)


def test_default_fparam_mixed_systems_and_tensor_fittings(tmp_path):
    """sys5 has fparam.npy (0.2, 0.4, 0.6), sys4 none: sys4's 5 frames count with 0.7 in the statistics,
    fparam_avg = (5 * 0.7 + 1.2) / 8 (DeePMD-kit 3.2 is order-dependent here: it overwrites every
    sample with the default when the first system lacks fparam.npy, else stops with KeyError 'fparam').
    A dipole fitting takes the default the same way; a wrong length is refused."""
    write_system(tmp_path / "sys4", 4, 5, seed=1)
    write_system(tmp_path / "sys5", 5, 3, seed=2)
    np.save(tmp_path / "sys5" / "set.000" / "fparam.npy", np.array([[0.2], [0.4], [0.6]]))
    trainer = _fparam_trainer(tmp_path)
    assert trainer.model.fitting.fparam_avg.item() == pytest.approx((5 * 0.7 + 1.2) / 8)
    descriptor = {"type": "se_e2_a", "sel": [4, 4], "rcut": 4.0, "rcut_smth": 0.5, "neuron": [4, 8], "axis_neuron": 2,
                  "seed": 1}
    fitting = {"type": "dipole", "neuron": [8], "seed": 1, "numb_fparam": 2, "default_fparam": [0.3, -1.0]}
    model = build_model({"type_map": ["C", "H"], "descriptor": descriptor, "fitting_net": fitting}).eval()
    frames = read_systems([str(tmp_path / "sys4")], None, type_map=["C", "H"])[0]
    batch = collate(list(AtomsDataset(list(frames), cutoff=model.cutoff)), dtype=torch.float64)
    with torch.no_grad():
        default = model(batch)[K.DIPOLE]
        batch[K.FPARAM] = torch.tensor([[0.3, -1.0]] * 5, dtype=torch.float64)
        explicit = model(batch)[K.DIPOLE]
        batch[K.FPARAM] = torch.tensor([[0.3, 1.0]] * 5, dtype=torch.float64)
        other = model(batch)[K.DIPOLE]
    assert torch.equal(default, explicit) and (default - other).abs().max() > 1e-6
    with pytest.raises(ConfigError, match="default_fparam.*has 1 values, expected numb_fparam = 2"):
        build_model({"type_map": ["C", "H"], "descriptor": descriptor, "fitting_net": {**fitting, "default_fparam": [1.0]}})


# ---- model_branch_alias, finetune_head ----------------------------------------------------------------
_DESCRIPTOR = {"type": "se_e2_a", "sel": [4, 4], "rcut": 4.0, "rcut_smth": 0.5, "neuron": [4, 8], "axis_neuron": 2,
               "seed": 1}


def _multi_task_section(alias_b=("Default", "other")):
    head = {"type_map": "types", "descriptor": "d", "fitting_net": {"neuron": [8], "seed": 2}}
    return {"type": "multi_task", "shared_dict": {"types": ["C", "H"], "d": dict(_DESCRIPTOR)},
            "model_dict": {"water_a": dict(head, model_branch_alias=["A"]),
                           "water_b": dict(head, fitting_net={"neuron": [8], "seed": 3},
                                           model_branch_alias=list(alias_b))}}


def _sys4_batch(tmp_path, cutoff):
    if not (tmp_path / "sys4").exists():
        write_system(tmp_path / "sys4", 4, 5, seed=1)
    frames = read_systems([str(tmp_path / "sys4")], None, type_map=["C", "H"])[0]
    return collate(list(AtomsDataset(list(frames), cutoff=cutoff)), dtype=torch.float64)


def test_model_branch_alias_names_a_head_wherever_a_head_is_chosen(tmp_path):
    """A frozen multi-task file: --head by alias (and by name ignoring case) gives that head's energies;
    with no head (freeze, change-bias) the branch aliased Default is used (as DeePMD-kit's DeepEval);
    aliases stay in the config."""
    from mlpot.calculators.export import FORMAT_VERSION, FROZEN_FORMAT, save_frozen, select_head

    multi = build_model(_multi_task_section()).eval()
    save_frozen({"format": FROZEN_FORMAT, "format_version": FORMAT_VERSION, "model_config": multi.config,
                 "state_dict": multi.state_dict(), "dtype": "float64", "metadata": {"step": 0}}, tmp_path / "multi.pt")
    batch = _sys4_batch(tmp_path, multi.cutoff)
    with torch.no_grad():
        expected = {task: multi.heads[task](batch)[K.ENERGY] for task in multi.tasks}
        assert (expected["water_a"] - expected["water_b"]).abs().max() > 1e-3  # own fitting nets
        for head, task in (("A", "water_a"), ("other", "water_b"), ("WATER_A", "water_a")):
            model = load_model(tmp_path / "multi.pt", head=head)
            assert torch.equal(model(batch)[K.ENERGY], expected[task]), head
        model = select_head(load_model(tmp_path / "multi.pt"), None, "multi.pt")  # freeze / change-bias, no --head
        assert torch.equal(model(batch)[K.ENERGY], expected["water_b"])
    assert model.config["model_branch_alias"] == ["Default", "other"]  # kept with the head it names
    with pytest.raises(Exception, match=r"no head 'B' \(heads: water_a \(alias: A\), water_b \(alias: Default, other\)\)"):
        select_head(multi, "B", "multi.pt")
    with pytest.raises(ConfigError, match="alias 'A' of branch 'water_b' is already the name or an alias of branch 'water_a'"):
        build_model(_multi_task_section(alias_b=("A",)))


def test_finetune_head_picks_the_pretrained_branch_unless_model_branch_is_given(tmp_path):
    """model/finetune_head (a task or an alias) chooses the pretrained head when --model-branch is absent:
    the fine-tuned model starts from that head's weights, so its energies are the head's; --model-branch
    wins over it (DeePMD-kit 3.2's FinetuneRuleBuilder); RANDOM keeps the descriptor only."""
    from mlpot.models.deepmd.finetune import prepare_finetune

    multi = build_model(_multi_task_section()).eval()
    config = small_deepmd_input(tmp_path)
    config["model"]["descriptor"] = dict(_DESCRIPTOR)
    config["model"]["finetune_head"] = "other"

    def finetuned(branch=None, head="other"):
        config["model"]["finetune_head"] = head
        native = validate_config(deepmd.convert_dict(config, base_dir=tmp_path))
        weights, random_fitting = prepare_finetune(native, multi, build=build_model, branch=branch,
                                                   use_pretrain_script=True, pretrained_file="multi.pt")
        model = build_model(native.model)
        model.load_state_dict(weights)
        with torch.no_grad():
            return model.eval()(_sys4_batch(tmp_path, multi.cutoff))[K.ENERGY], random_fitting

    with torch.no_grad():
        expected = {task: multi.heads[task](_sys4_batch(tmp_path, multi.cutoff))[K.ENERGY] for task in multi.tasks}
    assert torch.equal(finetuned()[0], expected["water_b"])
    assert torch.equal(finetuned(branch="A")[0], expected["water_a"])
    assert finetuned(head="RANDOM")[1] is True
    with pytest.raises(ConfigError, match="model/finetune_head.*no branch 'nope'"):
        finetuned(head="nope")


# ---- num_epoch_dict ----------------------------------------------------------------------------------
def num_epoch_input(tmp_path, epochs):
    """Tasks a (sys4: 5 frames, batch 2: 3 batches per pass) and b (sys5 + sys6: 2 + 4 batches, prob_sys_size:
    ceil(max(2 / (2/6), 4 / (4/6))) = 6 steps per pass); ``epochs``: training/num_epoch_dict."""
    for name, atoms, frames, seed in (("sys4", 4, 5, 1), ("sys5", 5, 3, 2), ("sys6", 6, 7, 3)):
        if not (tmp_path / name).exists():
            write_system(tmp_path / name, atoms, frames, seed=seed)
    single = small_deepmd_input(tmp_path)
    head = {"type_map": "types", "descriptor": "d", "fitting_net": {"neuron": [8], "seed": 1}}
    loss = single["loss"]
    return {"model": {"shared_dict": {"types": ["C", "H"], "d": single["model"]["descriptor"]},
                      "model_dict": {"a": head, "b": dict(head, fitting_net={"neuron": [8], "seed": 2})}},
            "learning_rate": single["learning_rate"], "loss_dict": {"a": loss, "b": loss},
            "training": {"data_dict": {"a": {"training_data": {"systems": ["sys4"], "batch_size": 2}},
                                       "b": {"training_data": {"systems": ["sys5", "sys6"], "batch_size": 2}}},
                         "num_epoch_dict": epochs, "seed": 3, "disp_freq": 4, "save_freq": 100}}


def test_num_epoch_dict_sets_the_run_length_and_the_task_probabilities(tmp_path):
    """num_epoch_dict {a: 2.5, b: 0.75}: E_t L_t = 7.5 and 4.5, so ceil(12) = 12 steps with task
    probabilities 0.625 / 0.375 -- DeePMD-kit 3.2 on this input logs model_prob=[0.625 0.375] and
    num_steps=12 and trains 12 steps; the run here trains 12 steps too."""
    from mlpot.training.trainer import Trainer

    native = deepmd.convert_dict(num_epoch_input(tmp_path, {"a": 2.5, "b": 0.75}), base_dir=tmp_path)
    assert native["training"]["task_epochs"] == {"a": 2.5, "b": 0.75} and "prob" not in native["tasks"]["a"]
    native["output_dir"] = str(tmp_path / "out")
    trainer = Trainer(validate_config(native), progress=False)
    assert trainer.total_steps == 12
    assert trainer.data.task_sampler.probabilities.tolist() == pytest.approx([0.625, 0.375], abs=1e-15)
    trainer.run()
    assert trainer.step == 12


@pytest.mark.parametrize("edit, key, match", [
    (lambda t: t.update(numb_steps=10), "numb_steps", "num_epoch_dict and numb_steps exclude each other"),
    (lambda t: t.update(model_prob={"a": 1, "b": 1}), "model_prob", "num_epoch_dict and model_prob exclude each other"),
    (lambda t: t.update(num_epoch_dict={"a": 1}), "num_epoch_dict.b", "missing the epochs of task 'b'"),
    (lambda t: t.update(num_epoch_dict={"a": 1, "b": 0}), "num_epoch_dict.b", "expected a positive number, got 0"),
    (lambda t: t.update(num_epoch_dict={"a": 1, "b": 1, "c": 1}), "num_epoch_dict", "'c' is not a task of the model"),
    (lambda t: t.update(num_epoch_dict={}, numb_epoch=2), "numb_epoch", "numb_epoch is single-task only"),
])
def test_num_epoch_dict_errors(tmp_path, edit, key, match):
    config = num_epoch_input(tmp_path, {"a": 1, "b": 1})
    edit(config["training"])
    with pytest.raises(ConfigError, match=match) as info:
        deepmd.convert_dict(config, base_dir=tmp_path)
    assert key in str(info.value)
