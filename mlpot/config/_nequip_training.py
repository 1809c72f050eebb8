"""The ``training_module`` and ``trainer`` sections of a (resolved) NequIP 0.19 config, translated into
the native ``loss``, ``ema``, ``optimizer``, ``lr_schedule``, ``training``, ``logging`` and
``checkpoint`` sections (key checks as in :mod:`._nequip_sections`).

Semantics kept: loss coefficients normalised to sum to 1 (per-atom energy MSE, force MSE over
components, ``per_type_forces_coeffs`` as a per-type weighted mean); EMA with NequIP's warm-up;
validation at the end of every ``check_val_every_n_epoch``-th epoch; the value callbacks and the
plateau schedule monitor (``val0_epoch/weighted_sum``: the val_metrics weighted by their
normalised coefficients, or ``val0_epoch/<metric>``) becomes the native ``training.monitor``;
``ReduceLROnPlateau`` with torch's defaults; ``EarlyStopping`` and ``ModelCheckpoint`` with
Lightning's.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import torch

from mlpot.config._nequip_common import Context, check_keys, fail, kind_of

__all__ = ["training_module", "trainer_section"]

_LOSSES = {"nequip.train.EnergyForceLoss": ("total_energy", "forces"),
           "nequip.train.EnergyForceStressLoss": ("total_energy", "forces", "stress"),
           "nequip.train.EnergyOnlyLoss": ("total_energy",)}
_METRICS = {"nequip.train.EnergyForceMetrics": ("total_energy", "per_atom_energy", "forces"),
            "nequip.train.EnergyForceStressMetrics": ("total_energy", "per_atom_energy", "forces", "stress"),
            "nequip.train.EnergyOnlyMetrics": ("total_energy", "per_atom_energy")}
_METRIC_DEFAULTS = {"nequip.train.EnergyForceMetrics": {"total_energy_rmse": 1.0, "forces_rmse": 1.0},
                    "nequip.train.EnergyForceStressMetrics": {"total_energy_rmse": 1.0, "forces_rmse": 1.0, "stress_rmse": 1.0},
                    "nequip.train.EnergyOnlyMetrics": {"total_energy_rmse": 1.0}}
_NATIVE_METRIC = {"total_energy": "energy", "per_atom_energy": "energy_per_atom", "forces": "forces", "stress": "stress"}
_MODULES = {"nequip.train.EMALightningModule": True, "nequip.train.NequIPLightningModule": False}
_PLATEAU = "torch.optim.lr_scheduler.ReduceLROnPlateau"
_PLATEAU_DEFAULTS = {"mode": "min", "factor": 0.1, "patience": 10, "threshold": 1e-4, "threshold_mode": "rel", "cooldown": 0,
                     "min_lr": 0.0, "eps": 1e-8}


def _loss(value, native: Dict[str, Any], ctx: Context) -> None:
    key = "training_module.loss"
    target = value.get("_target_") if isinstance(value, dict) else None
    if target not in _LOSSES:
        fail(f"not supported yet: loss _target_ {target!r} (built: {sorted(_LOSSES)})", ctx, f"{key}._target_")
    fields = _LOSSES[target]
    allowed = {"coeffs": None, "per_atom_energy": None, "type_names": None, "extra_metrics": None}
    if "forces" in fields:
        allowed["per_type_forces_coeffs"] = None
    if "stress" in fields:
        allowed["ignore_nan"] = None
    body = check_keys(value, allowed, ctx, key)
    coeffs = dict(body.get("coeffs") or {f: 1.0 for f in fields})
    unknown = sorted(set(coeffs) - set(fields))
    if unknown:
        fail(f"unknown coefficient (the loss has {list(fields)})", ctx, f"{key}.coeffs.{unknown[0]}")
    total = sum(float(c) for c in coeffs.values() if c is not None)
    if total <= 0:
        fail("give at least one positive coefficient", ctx, f"{key}.coeffs")
    terms: Dict[str, Any] = {}
    for field_name, coeff in coeffs.items():
        if coeff is None or float(coeff) == 0:
            continue
        weight = float(coeff) / total
        if field_name == "total_energy":
            terms["energy_per_atom" if body.get("per_atom_energy", True) else "energy"] = {"weight": weight}
        else:
            terms[field_name] = {"weight": weight}
    per_type = body.get("per_type_forces_coeffs")
    if per_type is not None and "forces" in terms:
        terms["forces"]["per_type"] = dict(per_type)
    native["loss"] = {"terms": terms}
    ctx.loss_labels = tuple("energy" if t.startswith("energy") else t for t in terms)


def _val_metrics(value, ctx: Context) -> None:
    key = "training_module.val_metrics"
    target = value.get("_target_") if isinstance(value, dict) else None
    if target not in _METRICS:
        fail(f"not supported yet: val_metrics _target_ {target!r} (built: {sorted(_METRICS)})", ctx, f"{key}._target_")
    body = check_keys(value, {"coeffs": None, "type_names": None, "extra_metrics": None}, ctx, key)
    coeffs = body.get("coeffs") if body.get("coeffs") is not None else _METRIC_DEFAULTS[target]
    valid = {f"{f}_{m}" for f in _METRICS[target] for m in ("rmse", "mae", "maxabserr")}
    weights = {}
    for name, coeff in coeffs.items():
        if name not in valid:
            fail(f"unknown metric (valid: {sorted(valid)})", ctx, f"{key}.coeffs.{name}")
        if coeff is None or float(coeff) == 0:
            continue
        base, stat = name.rsplit("_", 1)
        if stat == "maxabserr":
            fail(f"not supported yet: {key}.coeffs.{name} (maximum absolute errors are not pooled)", ctx, f"{key}.coeffs.{name}")
        label = "energy" if base in ("total_energy", "per_atom_energy") else base
        if label not in ctx.loss_labels:
            fail(f"{name} needs {label} in the loss (validation errors are computed for the loss labels)", ctx, f"{key}.coeffs.{name}")
        weights[f"{_NATIVE_METRIC[base]}_{stat}"] = float(coeff)
    ctx.val_metrics = weights


def set_monitor(name: Optional[str], mode: str, ctx: Context, key: str) -> None:
    """The native monitor of a Lightning ``monitor`` string; every section must name the same one."""
    if name is None:
        return
    if mode != "min":
        fail(f"not supported yet: mode {mode!r} (NequIP's metrics are errors: min)", ctx, f"{key}.mode")
    prefix, _, metric = str(name).partition("/")
    if prefix != "val0_epoch":
        fail(f"not supported yet: monitor {name!r} (mlpot monitors validation metrics: val0_epoch/...)", ctx, f"{key}.monitor")
    if metric == "weighted_sum":
        if not ctx.val_metrics:
            fail("val0_epoch/weighted_sum needs val_metrics with coefficients", ctx, f"{key}.monitor")
        metrics = dict(ctx.val_metrics)
    else:
        base, _, stat = metric.rpartition("_")
        if base not in _NATIVE_METRIC or stat not in ("rmse", "mae"):
            fail(f"not supported yet: monitor {name!r}", ctx, f"{key}.monitor")
        metrics = {f"{_NATIVE_METRIC[base]}_{stat}": 1.0}
    monitor = {"metrics": metrics, "mode": "min"}
    if ctx.monitor is not None and ctx.monitor != monitor:
        fail(f"not supported yet: a second monitored value {name!r} (callbacks and the lr scheduler must monitor one)",
             ctx, f"{key}.monitor")
    ctx.monitor = monitor


def _optimizer(value, native: Dict[str, Any], ctx: Context) -> None:
    key = "training_module.optimizer"
    target = str(value.get("_target_", "")) if isinstance(value, dict) else ""
    name = target.rsplit(".", 1)[-1]
    cls = getattr(torch.optim, name, None) if target.startswith("torch.optim.") else None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        fail(f"not supported yet: optimizer _target_ {target!r} (torch.optim optimizers are built)", ctx, f"{key}._target_")
    body = {k: v for k, v in value.items() if k != "_target_"}
    if "param_groups" in body:
        fail(f"not supported yet: {key}.param_groups", ctx, f"{key}.param_groups")
    out: Dict[str, Any] = {"name": name}
    for option in ("lr", "weight_decay", "betas"):
        if option in body:
            out[option] = list(body.pop(option)) if option == "betas" else float(body.pop(option))
    if body:
        out["kwargs"] = body
    native["optimizer"] = out


def _scheduler(value, native: Dict[str, Any], check_val: int, ctx: Context) -> None:
    key = "training_module.lr_scheduler"
    body = check_keys(value, {"scheduler": None, "monitor": None, "interval": None, "frequency": None, "name": None,
                              "strict": None}, ctx, key)
    scheduler = body.get("scheduler") or {}
    if scheduler.get("_target_") != _PLATEAU:
        fail(f"not supported yet: lr scheduler {scheduler.get('_target_')!r} (built: {_PLATEAU})", ctx, f"{key}.scheduler._target_")
    options = check_keys(scheduler, {k: None for k in _PLATEAU_DEFAULTS}, ctx, f"{key}.scheduler")
    options = {**_PLATEAU_DEFAULTS, **options}
    if body.get("interval", "epoch") != "epoch" or int(body.get("frequency", 1)) != 1:
        fail("not supported yet: a plateau schedule stepped other than once per validation epoch (interval: epoch, "
             "frequency: 1)", ctx, f"{key}.interval")
    if not body.get("monitor"):
        fail("ReduceLROnPlateau needs a monitor", ctx, f"{key}.monitor")
    set_monitor(body["monitor"], options.pop("mode"), ctx, key)
    native["lr_schedule"] = {"type": "plateau", **{k: options[k] for k in ("factor", "patience", "threshold", "threshold_mode",
                                                                          "cooldown", "min_lr", "eps")}}


def training_module(value: Dict[str, Any], native: Dict[str, Any], ctx: Context) -> None:
    """``training_module``: EMA, loss, metrics, optimizer and lr scheduler (module docstring)."""
    key = "training_module"
    target = value.get("_target_")
    if target not in _MODULES:
        fail(f"not supported yet: _target_ {target!r} (built: {sorted(_MODULES)})", ctx, f"{key}._target_")
    allowed = {"model": None, "loss": None, "val_metrics": None, "train_metrics": None, "test_metrics": None,
               "optimizer": None, "lr_scheduler": None, **({"ema_decay": None} if _MODULES[target] else {})}
    body = check_keys(value, allowed, ctx, key)
    if _MODULES[target]:
        native["ema"] = {"decay": float(body.get("ema_decay", 0.999)), "warmup": True}
    _loss(body.get("loss") or fail("missing required key", ctx, f"{key}.loss"), native, ctx)
    _val_metrics(body.get("val_metrics") or fail("missing required key", ctx, f"{key}.val_metrics"), ctx)
    for name in ("train_metrics", "test_metrics"):
        if body.get(name) is not None:
            saved = ctx.val_metrics
            _val_metrics(body[name], ctx)  # checked like val_metrics; mlpot logs RMSE and MAE of every loss label
            ctx.val_metrics = saved
    _optimizer(body.get("optimizer") or fail("missing required key", ctx, f"{key}.optimizer"), native, ctx)
    ctx.notes.append("training_module: the validation, training and test metrics logged are the RMSE and MAE of every "
                     "loss label (energy, energy per atom, forces, stress)")
    native["_lr_scheduler"] = body.get("lr_scheduler")


_TRAINER_KEYS = {k: None for k in (
    "max_epochs", "max_steps", "min_epochs", "min_steps", "max_time", "accelerator", "devices", "num_nodes", "strategy",
    "precision", "log_every_n_steps", "check_val_every_n_epoch", "val_check_interval", "gradient_clip_val",
    "gradient_clip_algorithm", "callbacks", "logger", "enable_progress_bar", "enable_checkpointing", "enable_model_summary",
    "num_sanity_val_steps", "default_root_dir", "deterministic", "benchmark", "accumulate_grad_batches", "limit_train_batches",
    "limit_val_batches", "inference_mode")}


def _max_time(value, ctx: Context) -> float:
    """Lightning's max_time ("DD:HH:MM:SS" or {days, hours, minutes, seconds}) in seconds."""
    if isinstance(value, int) and not isinstance(value, bool):  # YAML 1.1 read DD:HH:MM:SS as a base-60 integer
        value = f"{value // 60 ** 3}:{value // 3600 % 60}:{value // 60 % 60}:{value % 60}"
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"days", "hours", "minutes", "seconds"})
        if unknown:
            fail("unknown key", ctx, f"trainer.max_time.{unknown[0]}")
        return float(value.get("days", 0)) * 86400 + float(value.get("hours", 0)) * 3600 + \
            float(value.get("minutes", 0)) * 60 + float(value.get("seconds", 0))
    parts = str(value).split(":")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        fail(f"expected DD:HH:MM:SS, got {value!r}", ctx, "trainer.max_time")
    days, hours, minutes, seconds = (int(p) for p in parts)
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def _length(body: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    steps = body.get("max_steps", -1)
    epochs = body.get("max_epochs")
    if steps not in (None, -1) and epochs is not None:
        fail("not supported yet: both max_epochs and max_steps (give one)", ctx, "trainer.max_steps")
    if steps not in (None, -1):
        return {"numb_steps": int(steps)}
    if epochs == -1:
        fail("not supported yet: max_epochs -1 (endless training)", ctx, "trainer.max_epochs")
    return {"numb_epochs": int(epochs if epochs is not None else 1000)}  # Lightning's default


def _callbacks(callbacks, native: Dict[str, Any], ctx: Context) -> None:
    for index, callback in enumerate(callbacks or []):
        key = f"trainer.callbacks.{index}"
        target = str(callback.get("_target_", "")) if isinstance(callback, dict) else ""
        name = target.rsplit(".", 1)[-1]
        if not target.startswith(("lightning.pytorch.callbacks.", "lightning.callbacks.", "pytorch_lightning.callbacks.")) or \
                name not in ("EarlyStopping", "ModelCheckpoint", "LearningRateMonitor"):
            fail(f"not supported yet: callback {target!r} (built: EarlyStopping, ModelCheckpoint, LearningRateMonitor)",
                 ctx, f"{key}._target_")
        if name == "LearningRateMonitor":
            check_keys(callback, {"logging_interval": None, "log_momentum": None, "log_weight_decay": None}, ctx, key)
            ctx.notes.append(f"{key}: LearningRateMonitor: the learning rate is in lcurve.out and the metrics CSV")
        elif name == "EarlyStopping":
            body = check_keys(callback, {k: None for k in ("monitor", "min_delta", "patience", "verbose", "mode", "strict",
                                                          "check_finite", "stopping_threshold", "divergence_threshold",
                                                          "check_on_train_epoch_end", "log_rank_zero_only")}, ctx, key)
            set_monitor(body.get("monitor") or fail("missing required key", ctx, f"{key}.monitor"), body.get("mode", "min"), ctx, key)
            native["training"]["early_stopping"] = {"patience": int(body.get("patience", 3)), "min_delta": abs(float(body.get("min_delta", 0.0))),
                                                    "check_finite": bool(body.get("check_finite", True)),
                                                    "stopping_threshold": body.get("stopping_threshold"),
                                                    "divergence_threshold": body.get("divergence_threshold")}
        else:
            _model_checkpoint(callback, native, ctx, key)


def _model_checkpoint(callback: Dict[str, Any], native: Dict[str, Any], ctx: Context, key: str) -> None:
    body = check_keys(callback, {k: None for k in ("dirpath", "filename", "monitor", "mode", "save_last", "save_top_k",
                                                  "every_n_epochs", "every_n_train_steps", "verbose", "save_weights_only",
                                                  "auto_insert_metric_name", "save_on_train_epoch_end")}, ctx, key)
    if int(body.get("save_top_k", 1)) not in (1, -1) or body.get("save_weights_only") or body.get("every_n_train_steps"):
        fail("not supported yet: save_top_k other than 1, save_weights_only, every_n_train_steps", ctx, key)
    checkpoint = native.setdefault("checkpoint", {})
    if body.get("dirpath"):
        checkpoint["dir"] = os.path.relpath(str(body["dirpath"]), ctx.output_dir) if os.path.isabs(str(body["dirpath"])) \
            else str(body["dirpath"])
    if body.get("monitor"):
        set_monitor(body["monitor"], body.get("mode", "min"), ctx, key)
        checkpoint["best"] = f"{body.get('filename') or 'best'}.ckpt"
    if body.get("save_last") or not body.get("monitor"):
        checkpoint["prefix"] = "last"
        ctx.notes.append(f"{key}: the last checkpoint is {checkpoint.get('dir', '.')}/last.pt (mlpot's format; mlpot "
                         "test, freeze, package and fine-tuning read it)")


def _loggers(logger, native: Dict[str, Any], ctx: Context) -> None:
    logging = native.setdefault("logging", {})
    if logger is False:
        logging["metrics_csv"] = None
        return
    for index, entry in enumerate(logger if isinstance(logger, list) else [logger] if isinstance(logger, dict) else []):
        key = f"trainer.logger.{index}" if isinstance(logger, list) else "trainer.logger"
        name = str(entry.get("_target_", "")).rsplit(".", 1)[-1]
        if name == "WandbLogger":
            ctx.notes.append(f"{key}: mlpot does not log to Weights & Biases: the metrics go to lcurve.out and the metrics CSV")
            continue
        if name not in ("CSVLogger", "TensorBoardLogger"):
            fail(f"not supported yet: logger {entry.get('_target_')!r} (built: CSVLogger, TensorBoardLogger)", ctx, f"{key}._target_")
        body = check_keys(entry, {"save_dir": None, "name": None, "version": None, "prefix": None, "flush_logs_every_n_steps": None,
                                  "log_graph": None, "default_hp_metric": None}, ctx, key)
        version = body.get("version")
        parts = [str(body.get("save_dir") or "."), str(body.get("name") if body.get("name") is not None else "lightning_logs"),
                 f"version_{version}" if isinstance(version, int) else str(version or "version_0")]
        folder = os.path.relpath(os.path.join(*parts), ctx.output_dir) if os.path.isabs(parts[0]) else os.path.join(*parts)
        if name == "CSVLogger":
            logging["metrics_csv"] = os.path.join(folder, "metrics.csv")
            ctx.notes.append(f"{key}: CSVLogger writes mlpot's metrics CSV (columns: step, epoch, stage, lr, rmse/mae per label)")
        else:
            logging["tensorboard"], logging["tensorboard_log_dir"] = True, folder


def trainer_section(value: Dict[str, Any], native: Dict[str, Any], ctx: Context) -> None:
    """``trainer`` (a ``lightning.Trainer``): run length, validation, clipping, callbacks, loggers."""
    key = "trainer"
    kind_of(value, ["lightning.Trainer", "lightning.pytorch.Trainer"], ctx, key)
    if "inference_mode" in value:
        fail("inference_mode must not be set: forces need autograd during validation and test (as in NequIP)", ctx,
             f"{key}.inference_mode")
    body = check_keys(value, _TRAINER_KEYS, ctx, key)
    for name in ("min_epochs", "min_steps", "limit_train_batches", "limit_val_batches"):
        if body.get(name) not in (None, 1.0) and not (name.startswith("min") and not body.get(name)):
            fail(f"not supported yet: {key}.{name}", ctx, f"{key}.{name}")
    if body.get("devices") not in (None, 1, "1", "auto", [0]) or body.get("num_nodes", 1) != 1:
        fail("not supported yet: several devices from the config (launch with torchrun --nproc-per-node N)", ctx, f"{key}.devices")
    if str(body.get("precision", "32")) not in ("32", "64", "32-true", "64-true"):
        fail(f"not supported yet: precision {body['precision']!r} (the model's model_dtype sets it)", ctx, f"{key}.precision")
    training = {**_length(body, ctx), "valid_every_epochs": int(body.get("check_val_every_n_epoch") or 1),
                "change_bias_after_training": False}
    if body.get("max_time") is not None:
        training["max_time"] = _max_time(body["max_time"], ctx)
    if body.get("gradient_clip_val") is not None:
        if body.get("gradient_clip_algorithm", "norm") != "norm":
            fail("not supported yet: gradient_clip_algorithm value", ctx, f"{key}.gradient_clip_algorithm")
        training["clip_grad_norm"] = float(body["gradient_clip_val"])
    native["training"] = training
    native.setdefault("logging", {}).update(disp_freq=int(body.get("log_every_n_steps") or 50),
                                            progress_bar=bool(body.get("enable_progress_bar", True)), lcurve="lcurve.out")
    scheduler = native.pop("_lr_scheduler", None)
    if scheduler is not None:
        _scheduler(scheduler, native, training["valid_every_epochs"], ctx)
    _callbacks(body.get("callbacks"), native, ctx)
    _loggers(body.get("logger"), native, ctx)
    if body.get("default_root_dir"):
        ctx.notes.append("trainer.default_root_dir: outputs go to the output folder (--output-dir)")
    if ctx.monitor is not None:
        training["monitor"] = ctx.monitor
