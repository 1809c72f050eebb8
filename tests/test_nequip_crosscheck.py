"""Cross-check against NequIP 0.19.1 itself for the model options the shared reference model does not use.

NequIP (from the peer venv ``/work/peers/nequip``; skipped when it is absent) builds models with
per-edge-type cutoffs (asymmetric), ZBL (metal and real units), trainable Bessel frequencies,
readout MLPs (SiLU and fused linear), resnet, the norm nonlinearity, parity off, per-type
avg_num_neighbors, per-l multiplicities, the S preset and a float32 model; perturbs every weight;
evaluates the reference frames; and saves its state dict and configuration as a plain
``torch.save`` checkpoint (NequIP's code runs here, never code from a model archive). mlpot loads
each file with its checkpoint reader and must reproduce NequIP's energies, forces and stress.
"""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from mlpot.data import AtomsDataset, collate, read_frames
from mlpot.data import keys as K
from mlpot.models.derivatives import compute_derivatives
from mlpot.models.equivariant.nequip.files import load_nequip_checkpoint

NEQUIP_PYTHON = Path("/work/peers/nequip/bin/python")
VARIANTS = {'edge_zbl_bessel': {'seed': 3,
                     'model_dtype': 'float64',
                     'type_names': ['O', 'H'],
                     'r_max': 4.0,
                     'num_layers': 3,
                     'l_max': 2,
                     'parity': False,
                     'num_features': [6, 4, 2],
                     'type_embed_num_features': 5,
                     'radial_mlp_depth': 2,
                     'radial_mlp_width': 12,
                     'readout_mlp_hidden_layers_depth': 1,
                     'readout_mlp_hidden_layers_width': 5,
                     'num_bessels': 7,
                     'bessel_trainable': True,
                     'polynomial_cutoff_p': 5,
                     'avg_num_neighbors': {'O': 20.0, 'H': 25.0},
                     'per_edge_type_cutoff': {'O': 3.5, 'H': {'H': 3.0}},
                     'per_type_energy_scales': {'O': 1.2, 'H': 0.9},
                     'per_type_energy_shifts': -10.0,
                     'per_type_energy_scales_trainable': True,
                     'per_type_energy_shifts_trainable': True,
                     'pair_potential': {'_target_': 'nequip.nn.pair_potential.ZBL',
                                        'units': 'metal',
                                        'chemical_species': ['O', 'H'],
                                        'polynomial_cutoff_p': 8}},
 'linear_readout_resnet': {'seed': 4,
                           'model_dtype': 'float64',
                           'type_names': ['O', 'H'],
                           'r_max': 3.7,
                           'num_layers': 3,
                           'l_max': 1,
                           'num_features': 6,
                           'radial_mlp_depth': 1,
                           'radial_mlp_width': 10,
                           'readout_mlp_hidden_layers_depth': 2,
                           'readout_mlp_hidden_layers_width': 4,
                           'readout_mlp_nonlinearity': None,
                           'avg_num_neighbors': 18.0,
                           'per_type_energy_scales': 0.5,
                           'per_type_energy_shifts': {'O': -3.0, 'H': -1.0},
                           'convnet_resnet': True},
 'norm_nonlinearity': {'seed': 5,
                       'model_dtype': 'float64',
                       'type_names': ['O', 'H'],
                       'r_max': 3.7,
                       'num_layers': 2,
                       'l_max': 1,
                       'num_features': 5,
                       'radial_mlp_depth': 1,
                       'radial_mlp_width': 10,
                       'avg_num_neighbors': 18.0,
                       'convnet_nonlinearity_type': 'norm',
                       'per_type_energy_scales': 0.5,
                       'per_type_energy_shifts': 2.0},
 'preset_S': {'preset': 'S',
              'seed': 6,
              'model_dtype': 'float64',
              'type_names': ['O', 'H'],
              'r_max': 3.7,
              'num_features': [16, 8],
              'type_embed_num_features': 8,
              'radial_mlp_width': 16,
              'avg_num_neighbors': 18.0,
              'per_type_energy_scales': 0.5,
              'per_type_energy_shifts': 2.0},
 'float32_model': {'seed': 7,
                   'model_dtype': 'float32',
                   'type_names': ['O', 'H'],
                   'r_max': 4.0,
                   'num_layers': 2,
                   'l_max': 2,
                   'num_features': 6,
                   'radial_mlp_depth': 1,
                   'radial_mlp_width': 10,
                   'avg_num_neighbors': 18.0,
                   'per_type_energy_scales': {'O': 1.2, 'H': 0.9},
                   'per_type_energy_shifts': {'O': -3.0, 'H': -1.0},
                   'pair_potential': {'_target_': 'nequip.nn.pair_potential.ZBL',
                                      'units': 'real',
                                      'chemical_species': ['O', 'H']}}}

NEQUIP_SIDE = r"""
import json, sys, numpy as np, torch, ase.io
from nequip.utils.global_state import set_global_state
set_global_state()
from nequip.model import NequIPGNNModel, PresetNequIPGNNModel
from nequip.data import AtomicDataDict, from_ase
from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
variants = json.loads(sys.argv[1])
out_dir = sys.argv[2]
frames = ase.io.read(sys.argv[3], ":")
for name, config in variants.items():
    builder = PresetNequIPGNNModel if "preset" in config else NequIPGNNModel
    model = builder(**config)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.add_(0.05 * torch.randn_like(p))  # move every weight off its initial value
    model.eval()
    transforms = [ChemicalSpeciesToAtomTypeMapper(model_type_names=config["type_names"]),
                  NeighborListTransform(r_max=config["r_max"], per_edge_type_cutoff=config.get("per_edge_type_cutoff"), type_names=config["type_names"])]
    energies, forces, stresses = [], [], []
    for atoms in frames:
        data = from_ase(atoms)
        for t in transforms:
            data = t(data)
        data = AtomicDataDict.batched_from_list([data])
        out = model(data)
        energies.append(out["total_energy"].detach().reshape(-1).numpy())
        forces.append(out["forces"].detach().numpy())
        stresses.append(out["stress"].detach().reshape(3, 3).numpy() if "stress" in out and out["stress"].numel() else np.full((3, 3), np.nan))
    torch.save({"state_dict": {"model.sole_model." + k: v for k, v in model.state_dict().items()}, "hyper_parameters": {"model": {"_target_": "nequip.model." + builder.__name__, **config}}}, f"{out_dir}/{name}.ckpt")
    np.savez(f"{out_dir}/{name}.npz", energy=np.concatenate(energies), forces=np.concatenate(forces), stress=np.stack(stresses))
"""


@pytest.mark.slow
def test_options_match_nequip(tmp_path, shared_data):
    if not NEQUIP_PYTHON.exists():
        pytest.skip(f"NequIP 0.19.1 venv not found at {NEQUIP_PYTHON}")
    frames_file = shared_data("nequip_reference") / "frames.xyz"
    run = subprocess.run([str(NEQUIP_PYTHON), "-c", NEQUIP_SIDE, json.dumps(VARIANTS), str(tmp_path), str(frames_file)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in VARIANTS:
        reference = np.load(tmp_path / f"{name}.npz")
        model = load_nequip_checkpoint(tmp_path / f"{name}.ckpt")
        dataset = AtomsDataset(read_frames(frames_file, type_map=model.type_map), model.cutoff, type_map=model.type_map)
        out = compute_derivatives(model, collate([dataset[i] for i in range(len(dataset))]), forces=True, stress=True)
        single = model.model_dtype == torch.float32
        energy = out[K.ENERGY].detach().numpy()
        assert np.abs(energy - reference["energy"]).max() / np.abs(reference["energy"]).max() < (1e-6 if single else 1e-12), name
        force_scale = np.abs(reference["forces"]).max()
        assert np.abs(out[K.FORCES].detach().numpy() - reference["forces"]).max() < (1e-6 if single else 1e-12) * max(force_scale, 1), name
        # frames 0-2 are periodic; NequIP's raw model gives the vacuum cluster a stress from its cell, mlpot none
        stress = out[K.STRESS].detach().numpy()[:3]
        assert np.abs(stress - reference["stress"][:3]).max() < (1e-5 if single else 1e-12), name
