"""`mlpot data info`: table and JSON output on the shared datasets; errors."""

from __future__ import annotations

import json

import pytest

from mlpot.cli import main


def test_data_info_table(shared_data, capsys):
    code = main(["data", "info", str(shared_data("deepmd_water/data_0")), str(shared_data("deepmd_water/data_1")),
                 "--cutoff", "6"])
    out = capsys.readouterr().out
    assert code == 0
    assert "frames           240" in out and "energy (240), forces (240)" in out
    assert "-93.57366" in out and "-187.14733" in out
    assert "min distance 0.885439 Å" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:2] in ("O ", "H ")}
    assert rows["O"][-1] == "38" and rows["H"][-1] == "72"


def test_data_info_json(shared_data, capsys, tmp_path):
    path = str(shared_data("water_clusters_aims/water_clusters.xyz"))
    assert main(["data", "info", path, "--json", "--cutoff", "3", "--cache-dir", str(tmp_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_frames"] == 150 and info["type_map"] == ["O", "H"]
    assert info["atoms_per_frame"]["min"] == 2 and info["atoms_per_frame"]["max"] == 37
    assert info["label_counts"]["atomic_multipoles"] == 150 and info["label_counts"]["fermi_level"] == 150
    assert info["systems"] == [{"path": path, "frames": 150}]
    assert len(info["max_neighbors_per_type"]) == 2 and info["min_distance"] > 0.9


def test_data_info_errors(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path / "missing")]) == 2
    assert "missing: path does not exist" in capsys.readouterr().err
    assert main(["data", "info", str(tmp_path), "--format", "vasp"]) == 2
    assert "unknown format 'vasp'" in capsys.readouterr().err
    assert main(["data"]) == 1
    with pytest.raises(SystemExit):
        main(["data", "info", "--help"])
    assert "--cutoff" in capsys.readouterr().out
