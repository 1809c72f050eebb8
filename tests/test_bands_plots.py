"""Plots a physicist reads: high-symmetry labels from the k-path, legends, system names, v(q) on the q range
the Hamiltonian uses with one colour per species, units on every axis."""

import numpy as np
import pytest
import torch

from mlpot.bands.inputs import read_system_bundle, species_order
from mlpot.bands.kpath import high_symmetry_labels, path_length
from mlpot.bands.plots import band_figure, potential_figure
from mlpot.bands.potentials import AnalyticFormFactor
from mlpot.bands.setup import read_species_params


def test_high_symmetry_labels_of_the_shipped_paths(shared_data):
    system = read_system_bundle(shared_data("bands/cdse_zb"), 0)
    assert high_symmetry_labels(system.cell, system.kpoints_frac) == [(0, "L"), (20, "Γ"), (40, "X"), (45, "K"),
                                                                      (60, "Γ")]
    cubic = 11.884 * np.eye(3)
    k = np.array([[0.5, 0.5, 0.5], [0.35, 0.35, 0.35], [0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.5, 0.5]])
    assert high_symmetry_labels(cubic, k) == [(0, "R"), (2, "Γ"), (3, "X"), (4, "M")]


def test_path_length_has_no_gap_where_the_path_continues_from_an_equivalent_point(shared_data):
    system = read_system_bundle(shared_data("bands/cdse_zb"), 0)
    x = path_length(system.cell, system.kpoints_frac)
    steps = np.diff(x)
    assert np.all(steps > 0) and steps[40] == pytest.approx(steps[41], rel=1e-6)  # X -> (½,½,1)·... -> K


def test_band_figure_has_labels_legend_name_and_units(shared_data):
    system = read_system_bundle(shared_data("bands/cdse_zb"), 0)
    system.settings["systemName"] = "zb-CdSe"
    fig = band_figure([system], [system.ref_bands + 0.1], title="final")
    full, zoom = fig.axes
    assert [t.get_text() for t in full.get_xticklabels()] == ["L", "Γ", "X", "K", "Γ"]
    assert [t.get_text() for t in full.get_legend().get_texts()] == ["reference", "model"]
    assert full.get_title().startswith("zb-CdSe final") and full.get_ylabel() == "E (eV)"
    assert "Bohr⁻¹" in full.get_xlabel()


def test_potential_figure_matches_colours_and_ignores_q_to_zero(shared_data):
    folder = shared_data("bands/cdse_zb")
    species = species_order([read_system_bundle(folder, 0)])
    analytic = AnalyticFormFactor(read_species_params(folder, species))
    model = AnalyticFormFactor(read_species_params(folder, species) * 1.05)
    fig = potential_figure(model, analytic, species, (0.95, 8.0))
    vq, diff, vr = fig.axes
    lines = {line.get_label(): line for line in vq.get_lines()}
    for atom in species:  # the reference (dashed) and the model (solid) of a species share a colour
        assert lines[f"{atom} Zunger"].get_color() == lines[f"{atom} model"].get_color()
        assert lines[f"{atom} Zunger"].get_linestyle() == "--" and lines[f"{atom} model"].get_linestyle() == "-"
    assert vq.get_xlim() == (0.0, 8.0)
    q = torch.linspace(0.95, 8.0, 400, dtype=torch.float64)[:, None]
    shown = analytic(q).numpy()
    low, high = vq.get_ylim()
    assert low <= shown.min() and high >= shown.max()
    v0 = analytic(torch.zeros(1, 1, dtype=torch.float64)).numpy()
    assert low > v0.min() or high < v0.max()  # v(q -> 0) (a uniform shift) does not set the scale
    assert "Ha·Bohr³" in vq.get_ylabel() and "Ha·Bohr³" in diff.get_ylabel() and vr.get_ylabel() == "v(r) (Ha)"
    assert all(ax.get_legend() is not None for ax in fig.axes)
