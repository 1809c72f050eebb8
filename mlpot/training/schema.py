"""The native configuration schema (pydantic 2, unknown keys forbidden everywhere).

A native config is one YAML file; peer front-ends (``config/deepmd.py``, ...) produce the same
dictionary. Sections (full reference with defaults and units in docs/config.md):

``seed``, ``dtype`` (model precision), ``output_dir``, ``family`` (where the config came from),
``model`` (passed unchanged to ``mlpot.models.build_model``), ``data`` (train/valid datasets,
batching and sampling), ``optimizer``, ``lr_schedule``, ``loss`` (terms with constant or
lr-coupled DeePMD prefactors), ``training`` (length, clipping, non-finite policy),
``train_schedule`` (stages), ``ema``, ``logging``, ``checkpoint``, ``full_validation`` (DeePMD-kit's
``validating``: periodic evaluation of the whole validation set, val.log, best checkpoints).

Multi-task training (DeePMD ``model_dict``): ``tasks`` replaces ``data`` and ``loss``: task name ->
its own ``data``, ``loss`` and ``prob`` (relative weight of drawing the task per step), and
``model`` is a ``multi_task`` section with one head per task.

Units: learning rates are per optimizer step; ``cutoff`` is in Å; stage ``start``/``end`` are
0-based and inclusive, counted in ``training.unit`` (steps or epochs).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Dict, List, Literal, Optional, Union

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from mlpot.training._strict import Strict
from mlpot.training.full_validation_schema import FULL_VALIDATION_METRICS, FullValidationConfig
from mlpot.training.monitor import EarlyStoppingConfig, MonitorConfig

__all__ = [
    "Strict", "DataSection", "DataConfig", "OptimizerGroup", "OptimizerConfig", "LRScheduleConfig",
    "LossTerm", "LossConfig", "TaskConfig", "TrainingConfig", "Stage", "EMAConfig", "LoggingConfig",
    "CheckpointConfig", "FullValidationConfig", "FULL_VALIDATION_METRICS", "NativeConfig",
]

_BATCH_SIZE = re.compile(r"^(auto|auto:\d+|max:\d+|filter:\d+|mixed:\d+)$")


class SplitSelection(Strict):
    """One part of a random split of the frames of ``paths`` (``mlpot.data.splits``: NequIP's split)."""

    sizes: Dict[str, Union[int, float]] = Field(min_length=2, description="part -> fraction (sum 1) or frame count, in order")
    part: str = Field(description="the part this section takes (a key of sizes)")
    seed: int = 0

    @model_validator(mode="after")
    def _part(self):
        if self.part not in self.sizes:
            raise ValueError(f"part {self.part!r} is not one of the sizes {list(self.sizes)}")
        return self


class DataSection(Strict):
    """One dataset (training or validation): a list of systems/files and how to batch them."""

    paths: List[str] = Field(description="DeePMD system folders, HDF5 groups (file.h5#/group) or files, or extxyz "
                             "files; empty for a validation set held out of the training data (valid_fraction)")
    format: str = Field("auto", description="auto | deepmd | deepmd/npy | deepmd/raw | deepmd/hdf5 | extxyz")
    key_map: Dict[str, Optional[str]] = Field(default_factory=dict, description="file key -> batch key (null: unread)")
    type_map: Optional[List[str]] = Field(None, description="unused by the trainer: the model's type_map defines the types")
    set_prefix: str = Field("set", description="DeePMD set folder prefix")
    batch_size: Union[int, List[int], str] = Field(
        "auto", description="int | list | auto | auto:N | max:N | filter:N | mixed:N (N frames across systems)")
    sampler: Literal["deepmd", "epoch"] = Field("epoch", description="deepmd: random system per step; epoch: shuffled passes")
    auto_prob: str = Field("prob_sys_size", description="DeePMD system probabilities: prob_uniform, prob_sys_size or prob_sys_size;s:e:w;...")
    sys_probs: Optional[List[float]] = Field(None, description="explicit system probabilities (overrides auto_prob)")
    numb_btch: int = Field(1, ge=0, validation_alias=AliasChoices("numb_btch", "numb_batch"),
                           description="validation batches per evaluation (DeePMD); 0 = all")
    shuffle: bool = Field(True, description="shuffle the epoch sampler")
    drop_last: bool = Field(False, description="epoch sampler: leave out a last batch shorter than batch_size (MACE)")
    isolated_atoms: Literal["keep", "exclude"] = Field("keep", description="exclude: ISOLATED_ATOM frames are not "
                                                       "batched (their energies stay visible to data hooks: MACE E0s)")
    split: Optional[SplitSelection] = Field(None, description="take one part of a random split of these frames")

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, value):
        if isinstance(value, str) and not _BATCH_SIZE.match(value):
            raise ValueError(f"expected an int or auto, auto:N, max:N, filter:N, mixed:N; got {value!r}")
        if isinstance(value, int) and value < 1:
            raise ValueError("batch_size must be >= 1")
        return value


class DataConfig(Strict):
    train: DataSection = Field(description="the training data")
    valid: Optional[DataSection] = Field(None, description="the validation data (optional)")
    test: Optional[DataSection] = Field(None, description="evaluated once after training (with the best checkpoint's "
                                        "weights when checkpoint.best is set)")
    cutoff: Optional[float] = Field(None, gt=0, description="neighbour cutoff override in Å (default: the model's)")
    stat_file: Optional[str] = Field(
        None, description="statistics file (DeePMD-kit's stat_file): an HDF5 file (.h5/.hdf5) or a directory where the "
        "neighbour statistics and the model's data statistics (env-matrix mean/std, output bias...) are stored and "
        "read back by later runs on the same data and model")
    stat_file_mode: Literal["update", "read"] = Field(
        "update", description="update: read what is there, write what is missing; read: never write (the "
        "statistics must be there)")
    min_distance: float = Field(0.3, ge=0, description="Å (mlpot.data.MIN_SANE_DISTANCE): two atoms of a frame closer than this are a data error "
                                "naming the file, frame and atoms (duplicated atoms, wrong units); 0: no check")
    valid_fraction: Optional[float] = Field(None, gt=0, lt=1, description="hold out this fraction of the training "
                                            "frames for validation (MACE's split, see data_setup.split_frames)")
    split_seed: Optional[int] = Field(None, description="seed of the valid_fraction split (default: the config seed)")

    @model_validator(mode="after")
    def _sources(self):
        if not self.train.paths:
            raise ValueError("train.paths is empty: give at least one dataset")
        if self.valid is not None and bool(self.valid.paths) == (self.valid_fraction is not None):
            raise ValueError("valid: give either valid.paths or valid_fraction (then valid sets only the batching)")
        return self


class OptimizerGroup(Strict):
    """A parameter group: parameters whose name matches any of ``params`` (fnmatch patterns)."""

    name: str = Field(description="group name (train_schedule group_lr uses it)")
    params: List[str] = Field(min_length=1, description="fnmatch patterns over parameter names")
    lr: Optional[float] = Field(None, gt=0, description="the group's lr (default: the optimizer's)")
    weight_decay: Optional[float] = Field(None, ge=0, description="the group's weight decay")
    kwargs: Dict[str, Any] = Field(default_factory=dict, description="other optimizer keywords for this group")


class OptimizerConfig(Strict):
    name: str = Field("adam", description="any torch.optim class, case-insensitive (adam, adamw, sgd, ...)")
    lr: Optional[float] = Field(None, gt=0, description="default: lr_schedule.start_lr, else 1e-3")
    weight_decay: Optional[float] = Field(None, ge=0, description="weight decay of every group")
    betas: Optional[List[float]] = Field(None, min_length=2, max_length=2, description="Adam-style (b1, b2)")
    kwargs: Dict[str, Any] = Field(default_factory=dict, description="any other optimizer keyword")
    groups: List[OptimizerGroup] = Field(default_factory=list, description="parameter groups; parameters matching no group form the group 'default'")


class LRScheduleConfig(Strict):
    type: Literal["exp", "step", "cosine", "wsd", "plateau", "constant"] = Field("constant", description="exp (DeePMD), step, cosine, wsd (warmup-stable-decay), plateau or constant")
    start_lr: Optional[float] = Field(None, gt=0, description="first lr (default: optimizer.lr)")
    stop_lr: Optional[float] = Field(None, ge=0, description="final lr of exp, cosine and wsd (exp default 1e-8, cosine/wsd 0)")
    stop_lr_ratio: Optional[float] = Field(None, gt=0, description="stop_lr = start_lr * ratio")
    decay_steps: int = Field(5000, ge=1, description="exp: steps between two decays")
    decay_rate: Optional[float] = Field(None, gt=0, description="exp: decay factor (default: (stop/start)^(decay_steps/steps))")
    smooth: bool = Field(False, description="exp: decay every step instead of in stairs")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps (all types but plateau)")
    warmup_ratio: Optional[float] = Field(None, ge=0, lt=1, description="warm-up as a fraction of the steps (instead of warmup_steps)")
    warmup_start_factor: float = Field(0.0, ge=0, description="the warm-up starts at factor * start_lr")
    decay_phase_ratio: float = Field(0.1, gt=0, le=1, description="wsd: decay phase = floor(ratio * numb_steps)")
    decay_type: Literal["inverse_linear", "cosine", "linear"] = Field("inverse_linear", description="wsd decay rule")
    step_size: int = Field(1000, ge=1, description="step: steps between two decays")
    gamma: float = Field(0.5, gt=0, description="step: decay factor")
    factor: float = Field(0.5, gt=0, lt=1, description="plateau")
    patience: int = Field(10, ge=0, description="plateau, in validations")
    min_lr: float = Field(0.0, ge=0, description="plateau")
    threshold: float = Field(1e-4, ge=0, description="plateau: smallest change that counts as an improvement")
    threshold_mode: Literal["rel", "abs"] = Field("rel", description="plateau: threshold relative to the best or absolute")
    cooldown: int = Field(0, ge=0, description="plateau: validations to wait after a reduction")
    eps: float = Field(0.0, ge=0, description="plateau: reductions smaller than this are skipped")
    scale_by_worker: Literal["linear", "sqrt", "none"] = Field("none", description="multiply the lr by the number of processes (linear), its square root, or not")
    per_epoch: bool = Field(False, description="the schedule advances once per epoch: decay_steps, step_size and "
                            "warmup_steps count epochs (MACE's ExponentialLR)")


class LossTerm(Strict):
    """One loss term. ``weight`` is constant; with ``start_pref``/``limit_pref`` (DeePMD) the weight
    is ``limit + (start - limit) * lr / start_lr``."""

    weight: float = Field(1.0, ge=0, description="constant prefactor")
    start_pref: Optional[float] = Field(None, ge=0, description="DeePMD prefactor at the start lr: p = limit + (start - limit) * lr / start_lr")
    limit_pref: Optional[float] = Field(None, ge=0, description="DeePMD prefactor as the lr goes to 0")
    label: Optional[str] = Field(None, description="batch key compared (default: from the term name)")
    function: Literal["mse", "mae", "huber"] = Field("mse", description="residual function")
    huber_delta: float = Field(0.01, gt=0, description="huber: the quadratic-to-linear switch")
    atom_norm: Optional[Literal["none", "per_atom", "sqrt", "per_atom_sq"]] = Field(
        None, description="residual divided by 1, N, sqrt(N) or N^2 (default: from the term name)")
    relative: Optional[float] = Field(None, gt=0, description="forces: divide by |F*| + relative")
    vector_norm: bool = Field(False, description="forces: compare the per-atom norm |F - F*| instead of the "
                              "3 components (DeePMD f_use_norm)")
    atom_pref_default: Optional[float] = Field(
        None, gt=0, description="atom_pref term: per-atom weight used for a batch without atom_pref data "
        "(DeePMD use_default_pf: 1); unset: such a batch does not count in the term")
    atom_weight: bool = Field(False, description="atomic labels: residual times the per-atom atom_weight of the data")
    n_generalized: Optional[int] = Field(None, ge=1, description="generalized_force: generalised coordinates "
                                         "per frame (drdq holds n_atoms * 3 * n_generalized values)")
    per_type: Union[bool, Dict[str, float]] = Field(
        False, description="atomic labels: the term is the mean over atom types of the per-type means (true), or "
        "their weighted mean with these weights by type name (NequIP per_type_coeffs), types present in the batch")
    smooth: bool = Field(False, description="penalty terms (fixedpoint_scf_stability): softplus instead of relu")
    beta: float = Field(10.0, gt=0, description="penalty terms: softplus sharpness")
    offset: float = Field(1.0, description="penalty terms: value above which the prediction is penalised")

    @model_validator(mode="after")
    def _both_prefs(self):
        if (self.start_pref is None) != (self.limit_pref is None):
            raise ValueError("start_pref and limit_pref must be given together")
        return self


class LossConfig(Strict):
    type: Literal["native", "ener"] = Field("native", description="ener: DeePMD normalisation and metrics")
    terms: Dict[str, LossTerm] = Field(default_factory=dict, description="name -> weight or LossTerm")
    intensive_ener_virial: bool = Field(False, description="ener: divide the energy and virial MSE by N^2 instead of N")
    atom_ener_coeff: bool = Field(False, description="energy compared as sum_i c_i E_i, c = atom_ener_coeff of the data")

    @field_validator("terms", mode="before")
    @classmethod
    def _as_terms(cls, terms):
        """A bare number is shorthand for ``{weight: number}``."""
        if not isinstance(terms, dict):
            return terms
        return {name: {"weight": t} if isinstance(t, (int, float)) and not isinstance(t, bool) else t
                for name, t in terms.items()}


class TaskConfig(Strict):
    """One task of multi-task training: its datasets, its loss and how often it is drawn."""

    data: DataConfig = Field(description="the task's datasets")
    loss: LossConfig = Field(description="the task's loss")
    prob: Optional[float] = Field(None, ge=0, description="relative weight of training this task in a step "
                                  "(default: its number of training systems); weights are normalised")

    @model_validator(mode="after")
    def _has_terms(self):
        if not self.loss.terms:
            raise ValueError("loss.terms is empty: give at least one loss term")
        return self


class TrainingConfig(Strict):
    numb_steps: Optional[int] = Field(None, ge=1, validation_alias=AliasChoices("numb_steps", "num_steps", "max_steps"), description="run length in steps (give one of numb_steps, numb_epochs, sampler_epochs)")
    numb_epochs: Optional[int] = Field(None, ge=1, validation_alias=AliasChoices("numb_epochs", "num_epochs", "max_epochs"), description="run length in epochs")
    sampler_epochs: Optional[float] = Field(
        None, gt=0, description="run length in passes of DeePMD's system sampler (DeePMD-kit numb_epoch): "
        "ceil(sampler_epochs * ceil(max_k nbatch_k / p_k)) steps, counted once the training data are read")
    task_epochs: Optional[Dict[str, Annotated[float, Field(gt=0)]]] = Field(
        None, description="multi-task run length: task -> passes over its data (DeePMD-kit num_epoch_dict); with L_t "
        "the sampler_epochs steps of one pass, the run is ceil(sum_t E_t L_t) steps, task t drawn with p_t ~ E_t L_t")
    clip_grad_norm: Optional[float] = Field(None, gt=0, validation_alias=AliasChoices("clip_grad_norm", "gradient_max_norm"), description="clip the gradient 2-norm to this value")
    acc_freq: int = Field(1, ge=1, description="gradient accumulation: the optimizer steps every acc_freq batches "
                          "on the sum of their gradients; the lr schedule counts optimizer steps (DeePMD-kit acc_freq)")
    zero_stage: int = Field(0, ge=0, le=3, description="ZeRO stage of data-parallel training (DeePMD-kit "
                            "zero_stage): 1 shards the optimizer state over the ranks, 2 the gradients too; 3 not built; no effect in "
                            "one process")
    max_nonfinite: int = Field(100, ge=0, description="stop after this many skipped non-finite steps")
    valid_freq: Optional[int] = Field(None, ge=1, description="validate every N steps (default disp_freq)")
    valid_epochs: Optional[int] = Field(None, ge=1, description="also validate after epoch e (0-based) when "
                                        "e % valid_epochs == 0 (MACE eval_interval)")
    patience: Optional[int] = Field(None, ge=1, description="early stopping: after this many validations in a row "
                                    "without a validation loss below the stage's best, stop, or go on with the next "
                                    "train_schedule stage when there is one (MACE patience)")
    valid_every_epochs: Optional[int] = Field(None, ge=1, description="validate at the end of every N-th epoch "
                                              "instead (and after the last step)")
    monitor: Optional[MonitorConfig] = Field(None, description="the validation value the plateau schedule, early "
                                             "stopping and the best checkpoint follow (default: rmse)")
    early_stopping: Optional[EarlyStoppingConfig] = None
    max_time: Optional[float] = Field(None, gt=0, description="stop after this many seconds of training (wall time)")
    change_bias_after_training: bool = Field(
        True, description="after the last step, shift the energy bias by a least-squares fit of the "
        "remaining error on the statistics sample (DeePMD-kit's change-by-statistic; its default is off)")
    compute_dtype: Optional[Literal["float16", "bfloat16"]] = Field(
        None, description="mixed precision: the networks' matmuls and activations run in this dtype during "
        "training (parameters, gradients and everything else stay in dtype); frozen models evaluate in full precision")

    @model_validator(mode="after")
    def _length(self):
        given = [name for name in ("numb_steps", "numb_epochs", "sampler_epochs", "task_epochs") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of numb_steps, numb_epochs or sampler_epochs (or task_epochs)")
        return self

    @property
    def unit(self) -> str:
        return "epochs" if self.numb_epochs is not None else "steps"

    @property
    def length(self) -> Optional[int]:
        """Length in ``unit``; None for ``sampler_epochs`` and ``task_epochs`` (known once the data are read)."""
        if self.sampler_epochs is not None or self.task_epochs is not None:
            return None
        return int(self.numb_steps if self.numb_steps is not None else self.numb_epochs)


class Stage(Strict):
    """A stage of ``train_schedule``: [start, end] inclusive in training units."""

    name: str = Field(description="stage name (logs)")
    start: int = Field(ge=0, description="first step or epoch of the stage, 0-based, inclusive")
    end: int = Field(ge=0, description="last step or epoch of the stage, inclusive")
    lr: Optional[float] = Field(None, gt=0, description="base lr of the stage (groups keep their ratios)")
    group_lr: Dict[str, float] = Field(default_factory=dict, description="optimizer group name -> lr")
    loss: Optional[Dict[str, LossTerm]] = Field(None, description="replaces loss.terms")
    model_options: Dict[str, Any] = Field(default_factory=dict, description="passed to model.set_options")

    @field_validator("loss", mode="before")
    @classmethod
    def _as_terms(cls, terms):
        return LossConfig._as_terms(terms)

    @model_validator(mode="after")
    def _order(self):
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) is before start ({self.start})")
        return self


class EMAConfig(Strict):
    decay: float = Field(0.999, gt=0, lt=1, description="EMA decay")
    warmup: bool = Field(True, description="effective decay min(decay, (1+n)/(10+n))")


class LoggingConfig(Strict):
    disp_freq: int = Field(100, ge=1, description="display and lcurve row every N steps (and at step 1 and the last)")
    lcurve: Optional[str] = Field("lcurve.out", description="DeePMD lcurve.out file name (null: off)")
    metrics_csv: Optional[str] = Field("metrics.csv", description="metrics CSV file name (null: off)")
    debug_log: Optional[str] = Field("debug.log", description="debug log with the per-batch loss breakdown (null: off)")
    tensorboard: bool = Field(False, description="write TensorBoard scalars (needs tensorboard)")
    tensorboard_log_dir: str = Field("tensorboard", description="TensorBoard folder, relative to output_dir")
    tensorboard_freq: int = Field(1, ge=1, description="TensorBoard scalars every N steps")
    progress_bar: bool = Field(True, description="progress bar (on a TTY)")
    disp_training: bool = Field(True, description="print the display lines")
    disp_avg: bool = Field(False, description="training columns of lcurve.out (and the CSV/TensorBoard training "
                           "values) averaged over the steps since the previous display instead of the current "
                           "batch's values (DeePMD training/disp_avg); costs the metrics on every step")
    time_training: bool = Field(True, description="print the average step time")
    profile_file: Optional[str] = Field(None, description="write a torch.profiler Chrome trace of training "
                                        "steps 2-6 to this file (DeePMD-kit training/profiling)")
    profile_tensorboard: bool = Field(False, description="profile the same training steps with torch.profiler and "
                                      "write the trace for TensorBoard under tensorboard_log_dir (DeePMD enable_profiler)")


class CheckpointConfig(Strict):
    dir: str = Field(".", description="checkpoint folder, relative to output_dir")
    prefix: str = Field("model.ckpt", description="checkpoint files are <dir>/<prefix>-<step>.pt")
    every: int = Field(1000, ge=1, description="steps")
    keep: int = Field(5, ge=1, description="checkpoints kept (the oldest are deleted)")
    best: Optional[str] = Field(None, description="file (in dir) rewritten whenever the monitored validation value "
                                "improves")


class NativeConfig(Strict):
    family: Optional[str] = Field(None, description="informational: the peer format the config was converted from")
    seed: int = Field(0, ge=0, description="seeds torch, numpy, python and the samplers (validation sampler: seed + 1; "
                      "numpy needs a non-negative one)")
    dtype: Literal["float32", "float64"] = Field("float64", description="model precision (networks with precision: default); data are always float64")
    output_dir: str = Field(".", description="folder of logs, checkpoints and model.pt, relative to the YAML file")
    model: Dict[str, Any] = Field(description="the model section, typed by its family")
    data: Optional[DataConfig] = Field(None, description="required unless tasks is given")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="the torch optimizer and its parameter groups")
    lr_schedule: LRScheduleConfig = Field(default_factory=LRScheduleConfig, description="learning-rate schedule, stepped every training step")
    loss: LossConfig = Field(default_factory=LossConfig, description="loss terms and their prefactors")
    training: TrainingConfig = Field(description="run length and step options")
    train_schedule: List[Stage] = Field(default_factory=list, description="stages with their own lr, loss terms and model options (default: one stage 'train')")
    ema: Optional[EMAConfig] = Field(None, description="exponential moving average of the weights (validation and model.pt use it)")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="console, lcurve.out, CSV, TensorBoard, debug log, profiler")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="training checkpoints")
    tasks: Optional[Dict[str, TaskConfig]] = Field(None, description="multi-task training: task -> data, loss, prob")
    full_validation: Optional[FullValidationConfig] = Field(
        None, description="evaluate the whole validation set periodically, val.log, best checkpoints")
    finetune: Optional[str] = Field(None, description="pretrained model to start from (as mlpot train --finetune)")

    @field_validator("model")
    @classmethod
    def _typed_model(cls, section: Dict[str, Any]) -> Dict[str, Any]:
        """The model section is typed per family: validated by its family's section (discriminated
        by ``type``), errors at the key path inside the section with the closest valid key."""
        from mlpot.errors import ConfigError
        from mlpot.models.registry import check_model_section

        try:
            check_model_section(section)
        except ConfigError as error:
            raise PydanticCustomError("model_section", "{message}", {"message": error.message, "error": error}) from None
        return section

    @model_validator(mode="after")
    def _single_or_multi_task(self):
        if self.tasks is None:
            if self.data is None:
                raise ValueError("missing required section 'data' (or 'tasks' for multi-task training)")
            return self
        if not self.tasks:
            raise ValueError("tasks is empty: give at least one task")
        if self.data is not None or self.loss.terms:
            raise ValueError("with tasks, data and loss belong to each task (tasks.<name>.data / .loss)")
        if any(stage.loss for stage in self.train_schedule):
            raise ValueError("train_schedule stages cannot replace the loss in multi-task training")
        heads = self.model.get("model_dict") if self.model.get("type") == "multi_task" else None
        if not isinstance(heads, dict) or list(heads) != list(self.tasks):
            raise ValueError(f"tasks {list(self.tasks)} need a multi_task model whose model_dict has the same "
                             f"tasks in the same order (got {list(heads) if isinstance(heads, dict) else None})")
        return self

    @model_validator(mode="after")
    def _stages_contiguous(self):
        if self.training.sampler_epochs is not None or self.training.task_epochs is not None:
            if self.train_schedule:
                raise ValueError("train_schedule needs training.numb_steps or numb_epochs (the length of "
                                 "sampler_epochs / task_epochs is known only once the data are read)")
            if self.tasks is not None and self.training.sampler_epochs is not None:
                raise ValueError("not supported yet: training.sampler_epochs (DeePMD numb_epoch) with multi-task "
                                 "training (give training.task_epochs)")
        if self.training.task_epochs is not None and (self.tasks is None or set(self.training.task_epochs) != set(self.tasks)
                                                      or any(t.prob is not None for t in self.tasks.values())):
            raise ValueError("training.task_epochs needs tasks, one entry per task, and no task prob "
                             "(it sets the task weights)")
        expected = 0
        for index, stage in enumerate(self.train_schedule):
            if stage.start != expected:
                raise ValueError(f"train_schedule[{index}] ({stage.name!r}) starts at {stage.start}, expected {expected}")
            expected = stage.end + 1
        if self.train_schedule and expected != self.training.length:
            raise ValueError(
                f"train_schedule ends at {expected - 1} but training lasts {self.training.length} {self.training.unit}")
        if self.tasks is None and not self.loss.terms and not any(s.loss for s in self.train_schedule):
            raise ValueError("loss.terms is empty: give at least one loss term")
        return self

    @model_validator(mode="after")
    def _full_validation_fits(self):
        """DeePMD-kit's cross-section checks of ``validating`` (skipped when the feature is off)."""
        section = self.full_validation
        if section is None or not section.active:
            return self
        if not (section.live or section.ema):
            raise ValueError("full_validation: live and ema are both false; remove the section to turn it off")
        if self.tasks is not None:
            raise ValueError("full_validation: not supported with multi-task training (as in DeePMD-kit)")
        if self.data is None or self.data.valid is None:
            raise ValueError("full_validation needs validation data (data.valid)")
        if section.ema and self.ema is None:
            raise ValueError("full_validation.ema needs the ema section (EMA weights)")
        labels = FULL_VALIDATION_METRICS[section.metric.partition(":")[0]]
        sections = [self.loss.terms] + [stage.loss or {} for stage in self.train_schedule]
        trained = {term.label or name for section_terms in sections for name, term in section_terms.items()
                   if (term.weight > 0 if term.start_pref is None else (term.start_pref or term.limit_pref))}
        if not trained.intersection(labels):
            raise ValueError(f"full_validation.metric {section.metric} needs a loss term with a non-zero "
                             f"prefactor on {' or '.join(labels)}")
        return self

    def stages(self, length: Optional[int] = None) -> List[Stage]:
        """The stages, or one stage 'train' covering the whole run (``length`` units; the training
        length by default) when none are given."""
        if self.train_schedule:
            return list(self.train_schedule)
        return [Stage(name="train", start=0, end=(length or self.training.length) - 1)]
