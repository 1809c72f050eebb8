"""The DeePMD-kit input.json key table: every key of the spec (deepmd.md §2-5), with its status.

One record per key, grouped by section. A section whose keys depend on a ``type`` value (descriptor,
fitting_net, loss, learning_rate, model) has one table per type. Status:

* ``SUPPORTED``  -- read and honoured by mlpot;
* ``IGNORED``    -- accepted and deliberately without effect (documented why; e.g. a TF-only
  performance switch or a cosmetic option), never silently for a key that changes the result;
* ``UNSUPPORTED`` -- the feature is not built yet: using it raises
  ``ConfigError("not supported yet: <path>")``. Setting such a key to its DeePMD default (which
  requests nothing) is accepted, so unchanged default-filled files (``out.json``) still load.

``docs/deepmd_keys.md`` is generated from this table (``python -m mlpot.config.deepmd --keys-md``) and
a test checks that the two agree.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from mlpot.models.compose import FROZEN_KEYS, LINEAR_KEYS
from mlpot.models.deepmd.keys import (DESCRIPTOR_ALIASES, DESCRIPTOR_KEYS, FITTING_KEYS, MODIFIER_KEYS,
                                      MULTI_TASK_KEYS, PAIRWISE_DPRC_KEYS, SPIN_KEYS, STANDARD_KEYS, UNBUILT_DESCRIPTORS, UNBUILT_FITTINGS,
                                      UNBUILT_MODELS)
from mlpot.models.deepmd.keys_dpa2 import DPA2_FLAT_KEYS, DPA2_TABLES, nest_dpa2_section
from mlpot.models.pair import PAIRTAB_KEYS
from mlpot.models.sections import IGNORED, REQUIRED, SUPPORTED, UNSUPPORTED, Key

DeepmdKey = Key  # one record type for model keys (mlpot.models) and the front-end's own keys


def _k(status: str, *aliases: str, default: Any = REQUIRED, note: str = "", kind: Any = Any) -> Key:
    """A front-end key; ``kind`` (int, float, bool or Optional of one) is the type its value must have
    (checked by ``_deepmd_check``: an int for float is fine, a float for int only when whole)."""
    return Key(default, tuple(aliases), status, note, kind)


INT, NUM, FLAG = int, float, bool


S, I, U = SUPPORTED, IGNORED, UNSUPPORTED

# ---- model keys: listed once, in mlpot.models.deepmd.keys (descriptors, fittings, model types) -------
DESCRIPTORS: Dict[str, Dict[str, Key]] = DESCRIPTOR_KEYS
FITTINGS: Dict[str, Dict[str, Key]] = FITTING_KEYS
# the standard model's keys plus the keys of the input layout that the front-end handles itself
MODEL: Dict[str, Key] = {
    **{name: record for name, record in STANDARD_KEYS.items() if name != "nvnmd"},  # native only: from the nvnmd section
    "shared_dict": _k(S, note="multi-task: name -> descriptor section or type_map list, referenced by name from model_dict"),
    "model_dict": _k(S, note="multi-task (PyTorch layout): task -> model section; descriptor/type_map may name a shared_dict entry (share level 0)"),
    "fitting_net_dict": _k(S, note="multi-task (TF 2.x layout): task -> fitting_net, one shared descriptor"),
    "tab_file": _k(S, note="model/type pairtab (with rcut, sel); an error in a standard model"),
    "model_file": _k(S, note="model/type frozen; an error in a standard model"),
    "models": _k(S, note="model/type linear_ener; an error in a standard model"),
    "weights": _k(S, note="model/type linear_ener (a list, \"mean\" or \"sum\"); an error in a standard model"),
    "qm_model": _k(S, note="model/type pairwise_dprc; an error in a standard model"),
    "qmmm_model": _k(S, note="model/type pairwise_dprc; an error in a standard model"),
}
# keys of the composite model types, meaningless in a standard model
COMPOSITE_MODEL_KEYS = {"tab_file": "pairtab", "model_file": "frozen", "models": "linear_ener", "weights": "linear_ener",
                        "qm_model": "pairwise_dprc", "qmmm_model": "pairwise_dprc"}
MODEL_TYPES: Dict[str, Dict[str, Key]] = {"linear_ener": LINEAR_KEYS, "pairtab": PAIRTAB_KEYS, "frozen": FROZEN_KEYS,
                                          "multi_task": MULTI_TASK_KEYS, "pairwise_dprc": PAIRWISE_DPRC_KEYS}

# ---- learning rate, loss, optimizer ------------------------------------------------------------
LEARNING_RATE = {
    "type": _k(S, default="exp", note="exp"),
    "start_lr": _k(S, kind=NUM),
    "stop_lr": _k(S, kind=Optional[NUM]),
    "stop_lr_ratio": _k(S, kind=Optional[NUM]),
    "decay_steps": _k(S, kind=INT),
    "decay_rate": _k(S, kind=Optional[NUM]),
    "smooth": _k(S, note="lr = start_lr * decay_rate^(t / decay_steps) without flooring", kind=FLAG),
    "scale_by_worker": _k(S, note="linear / sqrt / none, by the data-parallel world size"),
    "warmup_steps": _k(S, note="linear warm-up steps; the decay restarts after them (T = numb_steps - warmup)", kind=Optional[INT]),
    "warmup_ratio": _k(S, note="warm-up steps = int(ratio * numb_steps); not together with warmup_steps", kind=Optional[NUM]),
    "warmup_start_factor": _k(S, note="warm-up starts at factor * start_lr (default 0)", kind=NUM),
}
_LR_SHARED = ("type", "start_lr", "stop_lr", "stop_lr_ratio", "scale_by_worker", "warmup_steps", "warmup_ratio",
              "warmup_start_factor")
LEARNING_RATE_COSINE = {name: LEARNING_RATE[name] for name in _LR_SHARED}
LEARNING_RATE_COSINE["type"] = _k(S, note="lr = stop_lr + (start_lr - stop_lr)(1 + cos(pi t'/T))/2, t' = t - warmup, T = numb_steps - warmup; stop_lr after")
LEARNING_RATE_WSD = {name: LEARNING_RATE[name] for name in _LR_SHARED}
LEARNING_RATE_WSD.update(
    {
        "type": _k(S, note="warm-up, stable at start_lr, then decay over the last floor(decay_phase_ratio * numb_steps) steps"),
        "decay_phase_ratio": _k(S, note="default 0.1, in (0, 1]; a fraction of numb_steps (warm-up included)", kind=NUM),
        "decay_type": _k(S, note="inverse_linear (default, 1/lr linear in the progress), cosine or linear"),
    }
)
LEARNING_RATES = {"exp": LEARNING_RATE, "cosine": LEARNING_RATE_COSINE, "wsd": LEARNING_RATE_WSD}
_PREFACTOR_TERMS = ("e", "f", "v", "ae", "pf", "gf", "h")
LOSS_ENER = {"type": _k(S, default="ener")}
_HESSIAN_NOTE = ("Hessian term: mean (H - H*)² over the (3N)² entries of d²E/dR² (autograd) against hessian.npy "
                 "(eV/Å²), on when start or limit is non-zero; lcurve rmse_h; not with use_huber")
for _term in _PREFACTOR_TERMS:
    _note = _HESSIAN_NOTE if _term == "h" else ""
    _default = 0.0 if _term == "h" else REQUIRED
    LOSS_ENER[f"start_pref_{_term}"] = _k(S, default=_default, kind=NUM, note=_note)
    LOSS_ENER[f"limit_pref_{_term}"] = _k(S, default=_default, kind=NUM, note=_note)
LOSS_ENER.update(
    {
        "relative_f": _k(S, kind=Optional[NUM]),
        "enable_atom_ener_coeff": _k(S, note="energy = sum_i c_i E_i, c from atom_ener_coeff.npy (needed in every system)", kind=FLAG),
        "numb_generalized_coord": _k(S, note="generalised coordinates of the gf loss; drdq.npy holds natoms*3*N per frame", kind=INT),
        "use_huber": _k(S, note="Huber on E/N, force components (or |dF| with f_use_norm), virial/N and atomic energies; loss_func mse only; not with pf, gf or relative_f", kind=FLAG),
        "huber_delta": _k(S, note="default 0.01; one number or [energy, force, virial]"),
        "loss_func": _k(S, note='"mse" (default) or "mae": |dE|/N, mean |dF| components, |dvirial|/N, mean |dE_i|, pf mean pref*|dF|; gf stays MSE; the MAE force term ignores relative_f (as DeePMD-kit)'),
        "f_use_norm": _k(S, note="forces compared by the per-atom norm |F - F*|; needs loss_func mae or use_huber", kind=FLAG),
        "intensive_ener_virial": _k(S, kind=FLAG),
        "use_default_pf": _k(S, note="pf term: a system without atom_pref.npy weighs every atom 1 (otherwise the term is off for it)", kind=FLAG),
    }
)
LOSS_TENSOR = {
    "type": _k(S),
    "pref": _k(S, note="constant weight of the global-label MSE (native term dipole / polarizability)", kind=NUM),
    "pref_atomic": _k(S, note="constant weight of the atomic-label MSE (atomic_dipole / atomic_polarizability)", kind=NUM),
    "enable_atomic_weight": _k(S, note="atomic residuals times atom_weight.npy (needed in every system)", kind=FLAG),
}
LOSS_DOS = {"type": _k(S)}
_DOS_NATIVE = {"dos": "dos", "cdf": "dos_cdf", "ados": "atom_dos", "acdf": "atom_dos_cdf"}
for _term, _native in _DOS_NATIVE.items():
    LOSS_DOS[f"start_pref_{_term}"] = _k(S, note=f"native term {_native}, lr-coupled", kind=NUM)
    LOSS_DOS[f"limit_pref_{_term}"] = _k(S, kind=NUM)
# ener_spin (spin models): the ener terms with the real force fr and the magnetic force fm
LOSS_ENER_SPIN = {"type": _k(S)}
for _term, _note in (("e", ""), ("fr", "real force (native term forces)"),
                     ("fm", "magnetic force -dE/ds on the magnetic atoms (native term force_mag, force_mag.npy)"),
                     ("v", ""), ("ae", ""),
                     ("pf", "atom_pref-weighted real force as in the ener loss (DeePMD-kit 3.2 PT accepts it "
                            "without applying it)")):
    LOSS_ENER_SPIN[f"start_pref_{_term}"] = _k(S, kind=NUM, note=_note)
    LOSS_ENER_SPIN[f"limit_pref_{_term}"] = _k(S, kind=NUM)
LOSS_ENER_SPIN.update({name: LOSS_ENER[name] for name in ("enable_atom_ener_coeff", "intensive_ener_virial")})
LOSS_ENER_SPIN["loss_func"] = _k(S, note='"mse" (default) or "mae" (|dE|/N, mean |dF_r|, mean |dF_m| over magnetic atoms, |dvirial|/N)')
LOSSES = {"ener": LOSS_ENER, "ener_spin": LOSS_ENER_SPIN, "tensor": LOSS_TENSOR, "dos": LOSS_DOS}
UNBUILT_LOSSES = ("property", "population", "dens")
OPTIMIZER = {
    "type": _k(S, default="Adam", note="Adam, AdamW or LKF (layer-wise Kalman filter: energy and force losses, one rank, single task)"),
    "adam_beta1": _k(S, kind=NUM),
    "adam_beta2": _k(S, kind=NUM),
    "weight_decay": _k(S, kind=NUM),
    "kf_blocksize": _k(S, note="LKF: the largest block of weights sharing one Kalman covariance (default 5120)", kind=INT),
    "kf_start_pref_e": _k(S, note="LKF: energy prefactor at the start, geometric towards kf_limit_pref_e (default 1)", kind=NUM),
    "kf_limit_pref_e": _k(S, note="LKF: energy prefactor at the end of training (default 1)", kind=NUM),
    "kf_start_pref_f": _k(S, note="LKF: force prefactor at the start (default 1)", kind=NUM),
    "kf_limit_pref_f": _k(S, note="LKF: force prefactor at the end of training (default 1)", kind=NUM),
}

# ---- training -----------------------------------------------------------------------------------
DATA_SECTION = {
    "systems": _k(S, note="list of system folders or HDF5 groups (file.h5#/group; file.h5: every system in it), "
                            "or one folder / HDF5 file searched recursively for type.raw"),
    "set_prefix": _k(S),
    "batch_size": _k(S, note='int, list, "auto", "auto:N", "max:N", "filter:N", "mixed:N" (N frames drawn across systems)'),
    "auto_prob": _k(S, "auto_prob_style"),
    "sys_probs": _k(S, "sys_weights"),
    "rglob_patterns": _k(S, note="glob patterns of the recursive system search: below systems (one folder or a list of folders) every folder matching a pattern at any depth (Path.rglob, the root itself excluded) that holds type.raw; sorted (DeePMD-kit: set order); not for HDF5 files"),
}
VALIDATION_DATA = {**DATA_SECTION, "numb_btch": _k(S, "numb_batch", kind=INT)}
TRAINING = {
    "training_data": _k(S),
    "validation_data": _k(S),
    "numb_steps": _k(S, "stop_batch", "num_steps", kind=INT),
    "numb_epoch": _k(S, "num_epoch", "num_epochs", "numb_epochs", note="run length in passes over the training data: ceil(numb_epoch * ceil(max_k nbatch_k / p_k)) steps (DeePMD-kit 3.x); not together with numb_steps", kind=NUM),
    "seed": _k(S, kind=Optional[INT]),
    "disp_file": _k(S),
    "disp_freq": _k(S, kind=INT),
    "save_freq": _k(S, kind=INT),
    "save_ckpt": _k(S),
    "max_ckpt_keep": _k(S, kind=INT),
    "save_dir": _k(S, note="folder of the checkpoints, the checkpoint pointer file and the model.ckpt.pt link (native checkpoint.dir)"),
    "numb_test": _k(I, note="deprecated since DeePMD-kit v2.0 (no effect there; its input conversion drops it, with a warning)"),
    "disp_training": _k(S, kind=FLAG),
    "time_training": _k(S, kind=FLAG),
    "disp_avg": _k(S, note="training lcurve columns averaged over the steps since the previous display (multi-task: over the steps of each task)", kind=FLAG),
    "tensorboard": _k(S, kind=FLAG),
    "tensorboard_log_dir": _k(S),
    "tensorboard_freq": _k(S, kind=INT),
    "mixed_precision": _k(S, note="{output_prec: float32, compute_prec: float16 | bfloat16}: the model is built in float32 and its networks run under torch.autocast in compute_prec during training (DeePMD-kit: TF only)"),
    "gradient_max_norm": _k(S, kind=Optional[NUM]),
    "warmup_steps": _k(S, note="older spelling of learning_rate/warmup_steps (start factor 0)", kind=Optional[INT]),
    "stat_file": _k(S, note="HDF5 file (.h5/.hdf5) or directory: mlpot stores its neighbour and model statistics under its own 'mlpot' group there and reads them back (a file DeePMD-kit wrote keeps its content)"),
    "stat_file_mode": _k(S, note="update (default): read what is there, write what is missing; read: never write, the statistics must be there"),
    "opt_type": _k(S, note="Adam, AdamW or LKF (layer-wise Kalman filter: energy and force losses, one rank, single task)"),
    "profiling": _k(S, note="torch.profiler Chrome trace of training steps 2-6", kind=FLAG),
    "profiling_file": _k(S, note="trace file (default timeline.json)"),
    "enable_profiler": _k(S, note="torch.profiler over training steps 2-6, written for TensorBoard under tensorboard_log_dir", kind=FLAG),
    "change_bias_after_training": _k(S, note="least-squares shift of the energy bias on the statistics sample after the last step (change-by-statistic); off unless set, as in DeePMD-kit (native configs: on by default)", kind=FLAG),
    "enable_ema": _k(S, kind=FLAG),
    "ema_decay": _k(S, kind=NUM),
    "enable_compile": _k(I, note="mlpot does not use torch.compile for training"),
    "zero_stage": _k(S, note="ZeRO stage of torchrun data-parallel training: 0 plain, 1 optimizer state sharded over the ranks (ZeroRedundancyOptimizer; checkpoints hold the consolidated state), 2 the gradients too (each summed onto its owner rank after the backward, not by FSDP2, whose freed parameters break the force loss's second backward); no effect in one process, as in DeePMD-kit; 3 (parameter sharding): not supported yet", kind=INT),
    "acc_freq": _k(S, note="gradient accumulation: the optimizer steps every acc_freq batches on the sum of their gradients; the lr schedule (and the lr-coupled loss prefactors) advance per optimizer step, numb_steps counts batches (DeePMD-kit 3.x, Paddle backend)", kind=INT),
    "data_dict": _k(S, note="multi-task: task -> {training_data, validation_data, stat_file}"),
    "model_prob": _k(S, note="multi-task: task -> weight of drawing the task per step (normalised; default: number of training systems)"),
    "fitting_weight": _k(S, note="multi-task, TF 2.x name of model_prob (default 1 per task; a task left out is never drawn)"),
    "num_epoch_dict": _k(S, note="multi-task: task -> epochs (every task; not with numb_steps or model_prob): with L_t = ceil(max_k nbatch_k / p_k) the steps of one pass over task t's systems, the run is ceil(sum_t E_t L_t) steps and task t is drawn with probability E_t L_t / sum (DeePMD-kit 3.x)"),
    "kf_blocksize": _k(S, note="older form of optimizer/kf_blocksize (opt_type LKF)", kind=INT),
    "kf_start_pref_e": _k(S, note="older form of optimizer/kf_start_pref_e (opt_type LKF)", kind=NUM),
    "kf_limit_pref_e": _k(S, note="older form of optimizer/kf_limit_pref_e (opt_type LKF)", kind=NUM),
    "kf_start_pref_f": _k(S, note="older form of optimizer/kf_start_pref_f (opt_type LKF)", kind=NUM),
    "kf_limit_pref_f": _k(S, note="older form of optimizer/kf_limit_pref_f (opt_type LKF)", kind=NUM),
}
# training/data_dict/<task> (multi-task)
TASK_DATA = {
    "training_data": _k(S),
    "validation_data": _k(S),
    "stat_file": _k(S),
}
TOP = {
    "model": _k(S),
    "learning_rate": _k(S),
    "loss": _k(S),
    "training": _k(S),
    "optimizer": _k(S),
    "validating": _k(S, note="full validation of the whole validation set, val.log and best checkpoints (table `validating`)"),
    "nvnmd": _k(S, note="NVNMD (quantised networks for the NVNMD hardware), emulated in software: table `nvnmd`; the two stages are `mlpot train-nvnmd -s s1|s2`"),
    "loss_dict": _k(S, note="multi-task: task -> loss section (TF 2.x layout: a task left out gets the default loss)"),
    "learning_rate_dict": _k(S, note="multi-task, TF 2.x: accepted when every task has the same schedule (one optimizer); per-task schedules not supported yet"),
}

# ---- nvnmd (DeePMD-kit TF; translated by _deepmd_nvnmd.py, built by mlpot.models.deepmd.nvnmd) --------
NVNMD = {
    "version": _k(S, default=0, note="0: se_a model, up to 4 types; 1: se_atten model (strip, no attention layer), up to 32 types; both stages", kind=INT),
    "max_nnei": _k(S, default=128, note="128 or 256: the largest sel entry allowed", kind=INT),
    "net_size": _k(S, default=128, note="width of the 3 fitting layers; NVNMD builds 128 only", kind=INT),
    "map_file": _k(S, default="none", note="map.npy: tables of the quantised descriptor (relative to the input's folder)"),
    "config_file": _k(S, default="none", note="config.npy: read and checked against the model (sel, rcut, rcut_smth, neuron, axis_neuron)"),
    "weight_file": _k(S, default="none", note="weight.npy of the first stage: read by mlpot train-nvnmd -s s2; in mlpot train not supported yet"),
    "enable": _k(S, default=False, note="NVNMD model (else the nvnmd section must keep its defaults); an input without model section needs it for mlpot train", kind=FLAG),
    "restore_descriptor": _k(S, default=False, note="mlpot train-nvnmd -s s2 (from weight.npy, embedding frozen); in mlpot train not supported yet", kind=FLAG),
    "restore_fitting_net": _k(S, default=False, note="mlpot train-nvnmd -s s2 (from weight.npy, trained further); in mlpot train not supported yet", kind=FLAG),
    "quantize_descriptor": _k(S, default=False, note="quantised descriptor: map tables, short floats (20 fraction bits), 23-bit fixed point", kind=FLAG),
    "quantize_fitting_net": _k(S, default=False, note="quantised fitting nets: 23-bit fixed point, weights rounded to 20 bits in the products", kind=FLAG),
    "sel": _k(S, note="NVNMD input without model section: version 0 the se_e2_a sel per type, version 1 one int (se_atten); at most max_nnei"),
    "rcut": _k(S, note="NVNMD input without model section: Å", kind=NUM),
    "rcut_smth": _k(S, note="NVNMD input without model section: Å", kind=NUM),
    "type_map": _k(S, note="NVNMD input without model section (else from the data)"),
}

# ---- validating (DeePMD-kit 3.2 full validation; checked and converted by _deepmd_validating.py) ------
VALIDATING = {
    "full_validation": _k(S, note="evaluate the whole validation set every validation_freq steps (native full_validation.live)"),
    "ema_full_validation": _k(S, note="the same with the EMA weights, log `val_ema.log`, checkpoints `best_ema.ckpt-*`; needs training/enable_ema"),
    "validation_freq": _k(S, note="steps, default 5000"),
    "save_best": _k(S, note="default true: best checkpoints `best.ckpt-<step>.t-<rank>.pt`"),
    "save_best_dir": _k(S, note="default: the folder of training/save_ckpt"),
    "max_best_ckpt": _k(S, note="default 1; ranked by metric, then step"),
    "validation_metric": _k(S, note="E, F, S or V with MAE or RMSE (default E:MAE); needs non-zero loss prefactors of that term"),
    "full_val_file": _k(S, note="default val.log"),
    "full_val_start": _k(S, note="default 0.5: 0 from the start, (0, 1) fraction of numb_steps, 1 off, > 1 a step"),
    "compiled_infer": _k(U, default=False, note="torch.compile of eval-time forwards (GPU/compile switch)"),
    "tf32_infer": _k(U, default=False, note="TF32 matmuls in eval-time forwards (GPU switch)"),
    "amp_infer": _k(U, default=False, note="bf16 autocast in eval-time forwards (GPU switch)"),
}


def all_tables() -> Dict[str, Dict[str, DeepmdKey]]:
    """Every table by a display path (``model/descriptor[se_e2_a]`` ...), for the docs."""
    tables = {"(top level)": TOP, "model": MODEL}
    tables.update({f"model[type={name}]": keys for name, keys in MODEL_TYPES.items()})
    tables.update({f"model/descriptor[{name}]": table for name, table in DESCRIPTORS.items()})
    tables.update({f"model/descriptor[dpa2]/{block}": table for block, table in DPA2_TABLES.items()})
    tables["model/descriptor[dpa2] (older flat keys)"] = DPA2_FLAT_KEYS
    tables.update({f"model/fitting_net[{name}]": table for name, table in FITTINGS.items()})
    tables.update({f"model/modifier[{name}]": table for name, table in MODIFIER_KEYS.items()})
    tables["model/spin"] = SPIN_KEYS
    tables.update({f"learning_rate[{name}]": table for name, table in LEARNING_RATES.items()})
    tables.update({f"loss[{name}]": table for name, table in LOSSES.items()})
    tables["optimizer"] = OPTIMIZER
    tables["training"] = TRAINING
    tables["training/training_data"] = DATA_SECTION
    tables["training/validation_data"] = VALIDATION_DATA
    tables["training/data_dict/<task>"] = TASK_DATA
    tables["validating"] = VALIDATING
    tables["nvnmd"] = NVNMD
    return tables
