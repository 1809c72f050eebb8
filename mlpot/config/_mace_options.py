"""The mace_run_train option table (mace-torch 0.3.16): every option, its default, how its value is
read and its status in mlpot.

One :class:`~mlpot.models.sections.Key` per option; ``annotation`` holds how a value is read
(``str``, ``int``, ``float``, ``bool`` (mace's str2bool: true/false/yes/no/1/0), ``flag``
(store_true: no value on the command line), ``literal`` (a Python literal such as ``"[64, 64]"``
or ``'{"Default": 1.0}'``; a YAML list or mapping is taken as it is), ``float_or_none``,
``list``). Status:

* ``SUPPORTED``: mapped onto the native config (``config/mace.py`` says how);
* ``IGNORED``: accepted without effect on the trained numbers (logging, plotting, data-loader
  workers, file locations handled elsewhere); the note says why;
* ``UNSUPPORTED``: any value other than the default is ``ConfigError("not supported yet: <option>")``.

``docs/mace_models.md`` lists this table (``python -m mlpot.config.mace --options-md``); a test
keeps the two in step. MACE-SCF's front-end extends the table with its own options.
"""

from __future__ import annotations

from typing import Any, Dict

from mlpot.models.sections import IGNORED, SUPPORTED, UNSUPPORTED, Key

__all__ = ["MACE_OPTIONS", "option"]


def option(default: Any, kind: str = "str", status: str = SUPPORTED, note: str = "", aliases=()) -> Key:
    return Key(default, tuple(aliases), status, note, kind)


S, I, U = SUPPORTED, IGNORED, UNSUPPORTED
_DIR = "file location (mlpot writes its outputs under work_dir)"
_LOG = "logging/plotting only (mlpot writes lcurve.out, metrics.csv, debug.log)"
_POLAR = "PolarMACE / field options of mace-torch's polar models"

MACE_OPTIONS: Dict[str, Key] = {
    # run, files, device
    "config": option(None, note="YAML file of options (mlpot train --config FILE); command-line options override it"),
    "name": option(None, note="run name: checkpoints <name>_run-<seed>-<step>.pt, frozen model <name>.pt"),
    "seed": option(123, "int", note="seed of the run and of the valid_fraction split"),
    "work_dir": option(".", note="output_dir"),
    "log_dir": option(None, status=I, note=_DIR), "model_dir": option(None, note="folder of the frozen <name>.pt"),
    "checkpoints_dir": option(None, note="checkpoint folder (default work_dir/checkpoints)"),
    "results_dir": option(None, status=I, note=_DIR), "downloads_dir": option(None, status=I, note=_DIR),
    "device": option("cpu", status=I, note="mlpot trains on CUDA when it is available, else on the CPU"),
    "default_dtype": option("float64", note="dtype: model precision float32 | float64"),
    "distributed": option(False, "flag", U, note="launch mlpot train with torchrun for data-parallel training"),
    "launcher": option("slurm", status=I, note="mlpot reads torchrun's environment"),
    "log_level": option("INFO", status=I, note=_LOG), "plot": option(True, "bool", I, note=_LOG),
    "plot_frequency": option(0, "int", I, note=_LOG), "plot_interaction_e": option(False, "bool", I, note=_LOG),
    "error_table": option("PerAtomRMSE", status=I, note="the final error table's layout (mlpot test prints its own)"),
    # model
    "model": option("MACE", note="MACE (a ScaleShiftMACE with zero shift, first interaction non-residual, as "
                    "mace_run_train builds it) | ScaleShiftMACE; other models not supported yet"),
    "r_max": option(5.0, "float"), "radial_type": option("bessel"), "num_radial_basis": option(8, "int"),
    "num_cutoff_basis": option(5, "int"), "pair_repulsion": option(False, "flag"),
    "distance_transform": option("None"), "apply_cutoff": option(True, "bool"),
    "use_last_readout_only": option(False, "bool"), "use_embedding_readout": option(False, "bool", U),
    "interaction": option("RealAgnosticResidualInteractionBlock"),
    "interaction_first": option("RealAgnosticResidualInteractionBlock"),
    "max_ell": option(3, "int"), "correlation": option(3, "int"), "use_reduced_cg": option(False, "bool", U),
    "use_so3": option(False, "bool", U), "use_agnostic_product": option(False, "bool"),
    "num_interactions": option(2, "int"), "MLP_irreps": option("16x0e"), "radial_MLP": option("[64, 64, 64]", "literal"),
    "hidden_irreps": option(None), "edge_irreps": option(None, status=U),
    "use_edge_irreps_first": option(False, "bool", U), "num_channels": option(None, "int"), "max_L": option(None, "int"),
    "gate": option("silu"),
    **{name: option(default, kind, U, note=_POLAR) for name, default, kind in (
        ("kspace_cutoff_factor", 1.5, "float"), ("atomic_multipoles_max_l", 0, "int"),
        ("atomic_multipoles_smearing_width", 1.0, "float"), ("field_feature_max_l", 0, "int"),
        ("field_feature_widths", "[1.0]", "str"), ("field_feature_norms", None, "str"),
        ("num_recursion_steps", 1, "int"), ("field_si", False, "bool"),
        ("include_electrostatic_self_interaction", False, "bool"), ("add_local_electron_energy", False, "bool"),
        ("quadrupole_feature_corrections", False, "bool"), ("return_electrostatic_potentials", False, "bool"),
        ("field_norm_factor", 0.02, "float"), ("fixedpoint_update_config", None, "str"),
        ("field_readout_config", None, "str"))},
    "scaling": option("rms_forces_scaling", note="std_scaling | rms_forces_scaling | no_scaling: scale (and "
                      "ScaleShiftMACE shift) computed from the training data"),
    "avg_num_neighbors": option(1.0, "float", note="used when compute_avg_num_neighbors is false"),
    "compute_avg_num_neighbors": option(True, "bool", note="true: mean neighbour count of the training data"),
    "compute_stress": option(False, "bool", I, note="stress is predicted whenever a loss or test needs it"),
    "compute_forces": option(True, "bool", note="must be true (forces are always trained)"),
    "compute_polarizability": option(False, "bool", U), "compute_atomic_dipole": option(False, "bool", U),
    # data
    "train_file": option(None, "literal", note="extxyz file(s); .h5 / .lmdb not supported yet"),
    "valid_file": option(None, "literal", note="extxyz file(s); else valid_fraction of train_file is held out"),
    "valid_fraction": option(0.1, "float", note="data.valid_fraction (mace's seeded split)"),
    "test_file": option(None, "literal", note="evaluated after training (energy, force errors printed)"),
    "test_dir": option(None, status=U), "multi_processed_test": option(False, "bool", I, note="h5 test files only"),
    "num_workers": option(0, "int", I, note="data-loader processes (mlpot reads the data once, in memory)"),
    "pin_memory": option(True, "bool", I, note="data-loader option without effect on the numbers"),
    "atomic_numbers": option(None, "literal", note="element table, e.g. '[1, 8]' (default: the training data's)"),
    "mean": option(None, "float", note="atomic_inter_shift (instead of the scaling's)"),
    "std": option(None, "float", note="atomic_inter_scale (instead of the scaling's)"),
    "statistics_file": option(None, status=U), "les_arguments": option(None, status=U),
    "E0s": option(None, "literal", note="average | estimated | foundation | {Z: eV} | file.json; isolated atoms "
                  "(config_type=IsolatedAtom) in train_file take precedence"),
    # fine-tuning
    "foundation_model": option(None, note="a mace .model / checkpoint or an mlpot model file (mlpot train --finetune); "
                               "named foundation models (small, medium, mp...) need a download: not supported yet"),
    "foundation_model_kwargs": option("{}", status=U), "foundation_head": option(None, status=U),
    "foundation_filter_elements": option(True, "bool", note="true: the foundation's readouts are loaded "
                                         "(mace_run_train's use of it); false (fresh readouts) not supported yet"),
    "foundation_model_elements": option(False, "bool", note="mlpot always keeps every element of the foundation "
                                        "model; for the elements of the data the model is the same function as "
                                        "mace_run_train's element-filtered copy"),
    "foundation_model_readout": option(True, "flag", I, note="not read by mace_run_train 0.3.16"),
    "multiheads_finetuning": option(True, "bool", note="multi-head replay needs pt_train_file (not supported yet); "
                                    "without it mace_run_train fine-tunes one head, as mlpot does"),
    **{name: option(default, kind, U, note="multi-head fine-tuning with replay data") for name, default, kind in (
        ("pseudolabel_replay", False, "bool"), ("pseudolabel_replay_compute_stress", False, "bool"),
        ("weight_pt_head", 1.0, "float"), ("real_pt_data_ratio_threshold", 0.1, "float"),
        ("num_samples_pt", 10000, "int"), ("force_mh_ft_lr", False, "bool"), ("subselect_pt", "random", "str"),
        ("filter_type_pt", "none", "str"), ("pt_train_file", None, "str"), ("pt_valid_file", None, "str"))},
    "allow_random_padding_pt": option(True, "bool", U, aliases=("disallow_random_padding_pt",),
                                      note="multi-head fine-tuning with replay data"),
    "heads": option(None, "literal", note="one head: its files, E0s and keys (info_keys / arrays_keys) as the "
                    "top-level options; several heads not supported yet"),
    "keep_isolated_atoms": option(False, "bool", note="true: isolated-atom frames are trained on too"),
    "lora": option(False, "bool", U), "lora_rank": option(4, "int", U), "lora_alpha": option(1.0, "float", U),
    # keys of the extxyz files
    "energy_key": option("REF_energy"), "forces_key": option("REF_forces"), "virials_key": option("REF_virials"),
    "stress_key": option("REF_stress"), "dipole_key": option("dipole", status=I, note="dipole models not built"),
    "polarizability_key": option("polarizability", status=I, note="polarizability models not built"),
    "head_key": option("head", status=I, note="one head"), "charges_key": option("REF_charges", status=I,
                                                                                 note="charges are not trained"),
    "elec_temp_key": option("elec_temp", status=I, note="embeddings not built"),
    "total_spin_key": option("total_spin", status=I, note="embeddings not built"),
    "total_charge_key": option("total_charge", status=I, note="embeddings not built"),
    "embedding_specs": option(None, status=U), "skip_evaluate_heads": option("pt_head", status=I, note="one head"),
    # loss and optimisation
    "loss": option("weighted", note="weighted | ef | forces_only | stress | virials | huber | l1l2energyforces"),
    "forces_weight": option(100.0, "float"), "energy_weight": option(1.0, "float"),
    "virials_weight": option(1.0, "float"), "stress_weight": option(1.0, "float"),
    "swa_forces_weight": option(100.0, "float", aliases=("stage_two_forces_weight",)),
    "swa_energy_weight": option(1000.0, "float", aliases=("stage_two_energy_weight",)),
    "swa_virials_weight": option(10.0, "float", aliases=("stage_two_virials_weight",)),
    "swa_stress_weight": option(10.0, "float", aliases=("stage_two_stress_weight",)),
    "dipole_weight": option(1.0, "float", I, note="dipole losses not built (loss dipole*: not supported yet)"),
    "swa_dipole_weight": option(1.0, "float", I, aliases=("stage_two_dipole_weight",), note="dipole losses not built"),
    "polarizability_weight": option(1.0, "float", I, note="polarizability losses not built"),
    "swa_polarizability_weight": option(1.0, "float", I, aliases=("stage_two_polarizability_weight",),
                                        note="polarizability losses not built"),
    "config_type_weights": option('{"Default":1.0}', "literal", U),
    "huber_delta": option(0.01, "float"),
    "optimizer": option("adam", note="adam | adamw (schedulefree not supported yet)"),
    "beta": option(0.9, "float"), "beta1_schedulefree": option(0.9, "float", U),
    "beta2_schedulefree": option(0.98, "float", U),
    "batch_size": option(10, "int"), "valid_batch_size": option(10, "int"),
    "lr": option(0.01, "float"), "swa_lr": option(1e-3, "float", aliases=("stage_two_lr",)),
    "weight_decay": option(5e-7, "float", note="on the interactions' linear weights and the products, as mace"),
    "lr_params_factors": option('{"embedding_lr_factor": 1.0, "interactions_lr_factor": 1.0, '
                                '"products_lr_factor": 1.0, "readouts_lr_factor": 1.0}', "literal"),
    "freeze": option(None, "int", U), "amsgrad": option(True, "flag", note="always on in mace_run_train"),
    "scheduler": option("ReduceLROnPlateau", note="ReduceLROnPlateau (per validation) | ExponentialLR (per epoch)"),
    "lr_factor": option(0.8, "float"), "scheduler_patience": option(50, "int"),
    "lr_scheduler_gamma": option(0.9993, "float"),
    "swa": option(False, "flag", aliases=("stage_two",), note="second stage from start_swa: swa_* weights, swa_lr"),
    "start_swa": option(None, "int", aliases=("start_stage_two",)),
    "lbfgs": option(False, "flag", U), "ema": option(False, "flag"), "ema_decay": option(0.99, "float"),
    "max_num_epochs": option(2048, "int"), "patience": option(2048, "int"),
    "eval_interval": option(1, "int"), "keep_checkpoints": option(False, "flag", I, note="mlpot keeps the last 5"),
    "save_all_checkpoints": option(False, "flag", I, note="mlpot keeps the last 5"),
    "restart_latest": option(False, "flag", note="resume from the newest checkpoint of the run"),
    "save_cpu": option(False, "flag", I, note="frozen mlpot models load on any device"),
    "clip_grad": option(10.0, "float_or_none"), "dry_run": option(False, "flag", U),
    "enable_cueq": option(False, "bool", U), "only_cueq": option(False, "bool", U),
    "enable_oeq": option(False, "bool", U),
    "wandb": option(False, "flag", U),
    **{name: option(default, kind, I, note="Weights and Biases (wandb: not supported yet)")
       for name, default, kind in (("wandb_dir", None, "str"), ("wandb_project", "", "str"),
                                   ("wandb_entity", "", "str"), ("wandb_name", "", "str"),
                                   ("wandb_log_hypers", None, "list"))},
}
