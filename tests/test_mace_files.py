"""Reading mace-torch files safely, and the MACE section's errors."""

from __future__ import annotations

import os
import zipfile

import pytest
import torch

from mlpot.errors import CheckpointError, ConfigError
from mlpot.models.equivariant.mace import build_mace, load_mace_checkpoint, load_mace_model_file


class _Marker:
    """Unpickling this would run ``os.system`` and create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _FxCode:
    """Unpickling this with torch's real ``reduce_graph_module`` would exec the code it carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        from torch.fx.graph_module import reduce_graph_module

        code = f"import os\nos.system('touch {self.marker}')\ndef forward(self):\n    return None\n"
        return reduce_graph_module, ({"_code": code, "_graphmodule_cls_name": "GraphModule"}, "import torch")


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.model"
    torch.save({"model": _Marker(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.model: refusing to unpickle the global posix\.system"):
        load_mace_model_file(path)
    assert not marker.exists()


def test_generated_code_in_a_model_file_is_never_executed(tmp_path):
    marker = tmp_path / "pwned_fx"
    path = tmp_path / "fx.model"
    torch.save(_FxCode(marker), path)
    with pytest.raises(CheckpointError, match="not supported yet: mace-torch model class torch.fx.graph_module"):
        load_mace_model_file(path)  # the record is inert: read, not run, then rejected as not a MACE
    assert not marker.exists()


def test_malicious_object_inside_a_mace_like_tree(tmp_path, shared_data):
    """A real mace-torch tree with one attribute replaced by a payload: refused at that global."""
    import pickle

    source = shared_data("mace_reference/model.model")
    marker = tmp_path / "pwned_tree"
    path = tmp_path / "tampered.model"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(path, "w") as tampered:
        for item in original.infolist():
            data = original.read(item.filename)
            if item.filename.endswith("data.pkl"):
                payload = pickle.dumps(_Marker(marker), protocol=2)[2:-1]  # one object, no PROTO/STOP
                data = data[:2] + payload + b"0" + data[2:]  # push it, pop it, then the real tree
            tampered.writestr(item, data)
    with pytest.raises(CheckpointError, match="tampered.model: refusing to unpickle the global posix.system"):
        load_mace_model_file(path)
    assert not marker.exists()


def test_unreadable_files_name_the_file(tmp_path):
    text = tmp_path / "notes.model"
    text.write_text("not a model")
    with pytest.raises(CheckpointError, match=r"notes\.model: not a torch\.save zip archive"):
        load_mace_model_file(text)
    state_only = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(2)}, state_only)
    with pytest.raises(CheckpointError, match=r"weights\.pt: expected a mace_run_train checkpoint"):
        load_mace_checkpoint(state_only, {"model": "MACE"})
    tensor_file = tmp_path / "tensor.model"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(CheckpointError, match="expected a pickled mace-torch module, found Tensor"):
        load_mace_model_file(tensor_file)


BASE = dict(type="mace", atomic_numbers=[1, 8], E0s={1: -1.0, 8: -2.0}, hidden_irreps="4x0e+4x1o", radial_MLP=[8],
            MLP_irreps="4x0e", max_ell=2)


@pytest.mark.parametrize("change,message", [
    (dict(num_chanels=8), r"model\.num_chanels: unknown key \(did you mean 'num_channels'\?\)"),
    (dict(interaction="RealAgnosticResidualInteractionBlok"), r"did you mean 'RealAgnosticResidualInteractionBlock'"),
    (dict(interaction="RealAgnosticAttResidualInteractionBlock"), r"not supported yet: model\.interaction"),
    (dict(use_so3=True), r"not supported yet: model\.use_so3"),
    (dict(edge_irreps="4x0e"), r"not supported yet: model\.edge_irreps"),
    (dict(E0s="average"), r"model\.E0s: E0s 'average' is computed from the training data"),
    (dict(E0s={1: -1.0}), r"model\.E0s: no energy for atomic numbers \[8\]"),
    (dict(E0s=None), r"model\.E0s: needs the isolated-atom energies"),
    (dict(atomic_numbers=None), r"model\.atomic_numbers: needs the element table"),
    (dict(hidden_irreps="4x0e+2x1o"), r"same number of channels for every irrep"),
    (dict(radial_MLP="[64, 64"), r"model\.radial_MLP: expected a list of widths"),
    (dict(correlation=[3, 2, 1]), r"model\.correlation: expected 2 values"),
    (dict(r_max=-1.0), r"model\.r_max: Input should be greater than 0"),
    (dict(atomic_inter_shift=1.0), r"need model: ScaleShiftMACE"),
    (dict(gate="relu"), r"model\.gate"),
])
def test_section_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        build_mace({**BASE, **change})


def test_hidden_irreps_from_channels_and_max_l():
    model = build_mace({**BASE, "hidden_irreps": None, "num_channels": 3, "max_L": 2})
    assert model.channels == 3 and [str(ir) for ir in model.layer_blocks[0]] == ["0e", "1o", "2e"]
    default = build_mace({k: v for k, v in BASE.items() if k != "hidden_irreps"} | {"radial_MLP": [4]})
    assert default.channels == 128  # mace_run_train's default hidden_irreps 128x0e + 128x1o
    assert default.config["model"] == "MACE" and default.config["correlation"] == 3


def test_atom_types_outside_the_element_table():
    from mlpot.errors import DataError
    from mlpot.testing import random_batch

    model = build_mace(BASE)
    batch = random_batch(n_frames=1, n_atoms=4, n_types=3, cutoff=3.0)
    batch["atom_types"] = torch.tensor([0, 1, 2, 1])
    with pytest.raises(DataError, match=r"atom_types: atom type 2 outside the model's elements \['H', 'O'\]"):
        model(batch)
