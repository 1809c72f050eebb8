"""DeePMD-kit input keys built late: ``rglob_patterns`` (spec deepmd.md §5.1), ``default_fparam``,
``model_branch_alias`` / ``finetune_head`` and ``num_epoch_dict``.

Small synthetic systems (``write_system`` of the extra-keys tests); the expected values were checked
against DeePMD-kit 3.2 (PyTorch backend) where noted.
"""

from __future__ import annotations

import pytest

from mlpot.config import deepmd, validate_config
from mlpot.errors import ConfigError
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
