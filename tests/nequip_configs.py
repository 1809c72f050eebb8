"""NequIP 0.19 configs and data for the NequIP front-end tests (no mlpot code here).

``TUTORIAL`` is NequIP's ``configs/tutorial.yaml`` (spec nequip.md §1.4) with only the data path,
the species and the sizes changed (``{data}``, ``[O, H]``, model and run sizes); ``water_extxyz``
writes frames of ``deepmd_water`` as extxyz with ASE (energy and forces in a SinglePointCalculator),
as a NequIP user would give them to ``ASEDataModule``.
"""

from pathlib import Path

import numpy as np

TUTORIAL = """
run: [train, test]

cutoff_radius: 4.5
num_layers: {num_layers}
l_max: 1
num_features: {num_features}
model_type_names: [O, H]
chemical_species: ${{model_type_names}}
monitored_metric: val0_epoch/weighted_sum

data:
  _target_: nequip.data.datamodule.ASEDataModule
  seed: 456
  split_dataset:
    file_path: {data}
    train: 0.8
    val: 0.1
    test: 0.1
  transforms:
    - _target_: nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper
      model_type_names: ${{model_type_names}}
    - _target_: nequip.data.transforms.NeighborListTransform
      r_max: ${{cutoff_radius}}
  train_dataloader:
    _target_: torch.utils.data.DataLoader
    batch_size: {batch_size}
    num_workers: 5
    shuffle: true
  val_dataloader:
    _target_: torch.utils.data.DataLoader
    batch_size: 10
    num_workers: ${{data.train_dataloader.num_workers}}
  test_dataloader: ${{data.val_dataloader}}
  stats_manager:
    _target_: nequip.data.CommonDataStatisticsManager
    dataloader_kwargs:
      batch_size: 10
    type_names: ${{model_type_names}}

trainer:
  _target_: lightning.Trainer
  accelerator: gpu
  enable_checkpointing: true
  max_epochs: {max_epochs}
  max_time: 03:00:00:00
  check_val_every_n_epoch: 1
  log_every_n_steps: 20
  logger:
    _target_: lightning.pytorch.loggers.wandb.WandbLogger
    project: nequip
    name: tutorial
    save_dir: ${{hydra:runtime.output_dir}}
  callbacks:
    - _target_: lightning.pytorch.callbacks.EarlyStopping
      monitor: ${{monitored_metric}}
      min_delta: 1e-3
      patience: 20
    - _target_: lightning.pytorch.callbacks.ModelCheckpoint
      monitor: ${{monitored_metric}}
      dirpath: ${{hydra:runtime.output_dir}}
      filename: best
      save_last: true
    - _target_: lightning.pytorch.callbacks.LearningRateMonitor
      logging_interval: epoch

training_module:
  _target_: nequip.train.EMALightningModule
  ema_decay: 0.999
  loss:
    _target_: nequip.train.EnergyForceLoss
    per_atom_energy: true
    coeffs:
      total_energy: 1.0
      forces: 1.0
  val_metrics:
    _target_: nequip.train.EnergyForceMetrics
    coeffs:
      total_energy_mae: 1.0
      forces_mae: 1.0
  train_metrics: ${{training_module.val_metrics}}
  test_metrics: ${{training_module.val_metrics}}
  optimizer:
    _target_: torch.optim.Adam
    lr: 0.01
  lr_scheduler:
    scheduler:
      _target_: torch.optim.lr_scheduler.ReduceLROnPlateau
      factor: 0.6
      patience: 5
      threshold: 0.2
      min_lr: 1e-6
    monitor: ${{monitored_metric}}
    interval: epoch
    frequency: 1
  model:
    _target_: nequip.model.NequIPGNNModel
    compile_mode: compile
    seed: 123
    model_dtype: float32
    type_names: ${{model_type_names}}
    r_max: ${{cutoff_radius}}
    num_bessels: 8
    bessel_trainable: false
    polynomial_cutoff_p: 6
    num_layers: ${{num_layers}}
    l_max: ${{l_max}}
    parity: true
    num_features: ${{num_features}}
    radial_mlp_depth: 2
    radial_mlp_width: {radial_width}
    avg_num_neighbors: ${{training_data_stats:num_neighbors_mean}}
    per_type_energy_scales: ${{training_data_stats:per_type_forces_rms}}
    per_type_energy_shifts: ${{training_data_stats:per_atom_energy_mean}}
    per_type_energy_scales_trainable: false
    per_type_energy_shifts_trainable: false
    pair_potential:
      _target_: nequip.nn.pair_potential.ZBL
      units: metal
      chemical_species: ${{chemical_species}}
"""


def tutorial(data, num_layers=2, num_features=8, radial_width=16, batch_size=5, max_epochs=1) -> str:
    return TUTORIAL.format(data=data, num_layers=num_layers, num_features=num_features, radial_width=radial_width,
                           batch_size=batch_size, max_epochs=max_epochs)


def deepmd_water_atoms(system: Path, limit=None):
    """ase.Atoms with a SinglePointCalculator (energy eV, forces eV/Å) of a deepmd_water system, read with numpy."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    names = Path(system, "type_map.raw").read_text().split()
    types = np.loadtxt(Path(system, "type.raw"), dtype=int).reshape(-1)
    out = []
    for set_dir in sorted(Path(system).glob("set.*")):
        coords, boxes = np.load(set_dir / "coord.npy"), np.load(set_dir / "box.npy")
        energies, forces = np.load(set_dir / "energy.npy"), np.load(set_dir / "force.npy")
        for coord, box, energy, force in zip(coords, boxes, energies, forces):
            atoms = Atoms([names[t] for t in types], positions=coord.reshape(-1, 3).astype(np.float64),
                          cell=box.reshape(3, 3).astype(np.float64), pbc=True)
            atoms.calc = SinglePointCalculator(atoms, energy=float(energy), forces=force.reshape(-1, 3).astype(np.float64))
            out.append(atoms)
    return out[:limit]


def water_extxyz(path: Path, systems, limit=None) -> Path:
    """Write the frames of deepmd_water systems to one extxyz file (ASE's writer)."""
    import ase.io

    frames = [atoms for system in systems for atoms in deepmd_water_atoms(system)]
    ase.io.write(path, frames[:limit], format="extxyz")
    return path
