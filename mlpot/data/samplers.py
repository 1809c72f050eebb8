"""Batch samplers: DeePMD-style system sampling and plain epochs; deterministic and resumable.

* :func:`resolve_batch_sizes` — DeePMD ``batch_size`` rules (spec deepmd.md §5.2): int, list,
  ``"auto"`` (= ``"auto:32"``), ``"auto:N"`` -> ceil(N / natoms), ``"max:N"`` ->
  max(1, floor(N / natoms)), ``"filter:N"`` -> like max:N but 0 (system dropped) above N atoms.
* :func:`system_probabilities` — ``prob_uniform``, ``prob_sys_size`` (proportional to the number of
  batches ceil(nframes / bs), [COMPAT] PT), ``"prob_sys_size;s:e:w;..."`` and ``sys_probs`` (§5.3).
* :class:`SystemSampler` — every step draws a system with those probabilities, then the next batch
  from that system's shuffled order (reshuffled when exhausted). A batch never mixes systems, except
  with ``batch_size: "mixed:N"``: then each of the N frames of the step draws its own system with
  those probabilities and takes that system's next frame (DeePMD ``get_batch_mixed``); frames of
  different sizes are batched by ``collate``.
* :class:`EpochSampler` — shuffles all frames each epoch and cuts batches of ``batch_size`` frames.
* :class:`TaskSampler` — multi-task training: the task of each step, drawn with ``model_prob``
  (:func:`task_probabilities`; default proportional to the number of training systems per task).

Both yield lists of *global* frame indices (systems concatenated in order), so they plug into
``torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)``. Their
``state_dict()`` holds the exact position (JSON-serialisable): after ``load_state_dict`` the same
batches follow. The state counts batches *drawn*; a DataLoader with workers prefetches, so an exact
resume needs ``num_workers=0`` or a state taken from the sampler when the batch was used.
"""

from __future__ import annotations

import math
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from mlpot.errors import ConfigError

__all__ = ["resolve_batch_sizes", "system_probabilities", "SystemSampler", "EpochSampler", "task_probabilities",
           "epoch_task_schedule", "TaskSampler"]


def resolve_batch_sizes(batch_size: Union[int, str, Sequence[int]], n_atoms: Sequence[int]) -> List[int]:
    """Batch size per system (frames) from DeePMD's ``batch_size`` and the atoms per system.

    Returns 0 for a system that ``"filter:N"`` drops. ``"mixed:N"`` gives N for every system (the
    global batch size; DeePMD uses it for the batches per system of ``prob_sys_size``).
    """
    n_atoms = [int(n) for n in n_atoms]
    if isinstance(batch_size, bool):
        raise ConfigError(f"expected an int, a list or 'auto[:N]'/'max:N'/'filter:N', got {batch_size!r}",
                          key="batch_size")
    if isinstance(batch_size, int):
        return [batch_size] * len(n_atoms)
    if isinstance(batch_size, (list, tuple)):
        if len(batch_size) != len(n_atoms):
            raise ConfigError(f"{len(batch_size)} batch sizes for {len(n_atoms)} systems", key="batch_size")
        return [int(b) for b in batch_size]
    rule, _, value = str(batch_size).partition(":")
    if rule == "auto":
        target = int(value) if value else 32
        return [math.ceil(target / n) for n in n_atoms]
    if rule == "mixed" and value.isdigit() and int(value) > 0:
        return [int(value)] * len(n_atoms)
    if rule in ("max", "filter") and value:
        target = int(value)
        sizes = [max(1, target // n) for n in n_atoms]
        if rule == "filter":
            sizes = [0 if n > target else s for s, n in zip(sizes, n_atoms)]
        return sizes
    raise ConfigError(f"expected an int, a list or 'auto[:N]'/'max:N'/'filter:N'/'mixed:N', got {batch_size!r}",
                      key="batch_size")


def system_probabilities(n_batches: Sequence[int], auto_prob: str = "prob_sys_size",
                         sys_probs: Optional[Sequence[float]] = None) -> np.ndarray:
    """Probability of drawing each system per step (spec §5.3); (n_systems,) float64 summing to 1.

    n_batches: batches per system, ceil(nframes / batch_size) (0 for dropped systems).
    """
    n_batches = np.asarray(n_batches, dtype=np.float64)
    n = len(n_batches)
    if n == 0 or not np.any(n_batches > 0):
        raise ConfigError(f"no system to sample from (batches per system: {n_batches.astype(int).tolist()}; "
                          "'filter:N' drops systems with more than N atoms)", key="batch_size")
    if sys_probs is not None:
        probs = np.asarray(sys_probs, dtype=np.float64)
        if probs.shape != (n,):
            raise ConfigError(f"{probs.size} entries for {n} systems", key="sys_probs")
        assigned = probs >= 0
        if probs[assigned].sum() > 1 + 1e-10:
            raise ConfigError(f"assigned probabilities sum to {probs[assigned].sum():.6g} > 1", key="sys_probs")
        out = np.where(assigned, probs, 0.0)
        rest = 1.0 - out.sum()
        if (~assigned).any():
            free = n_batches * ~assigned
            out = out + rest * free / free.sum()
        return out / out.sum()
    if auto_prob == "prob_uniform":
        out = (n_batches > 0).astype(np.float64)
        return out / out.sum()
    head, *blocks = str(auto_prob).split(";")
    if head != "prob_sys_size":
        raise ConfigError(f"unknown auto_prob {auto_prob!r}; expected prob_uniform, prob_sys_size "
                          "or 'prob_sys_size;s:e:w;...'", key="auto_prob")
    if not blocks:
        return n_batches / n_batches.sum()
    out = np.zeros(n)
    try:
        parsed = [(int(s), int(e), float(w)) for s, e, w in (b.split(":") for b in blocks)]
    except ValueError:
        raise ConfigError(f"cannot parse {auto_prob!r}; expected 'prob_sys_size;start:end:weight;...'",
                          key="auto_prob") from None
    total_weight = sum(w for _, _, w in parsed)
    for start, end, weight in parsed:
        block = n_batches[start:end]
        out[start:end] += weight / total_weight * block / block.sum()
    return out


class _ResumableSampler(torch.utils.data.Sampler):
    def __init__(self, seed: int):
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)

    def __iter__(self) -> Iterator[List[int]]:
        while True:
            batch = self.next_batch()
            if batch is None:
                return
            yield batch

    def _rng_state(self):
        return self.rng.bit_generator.state

    def _set_rng_state(self, state):
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state


class SystemSampler(_ResumableSampler):
    """DeePMD sampling: a system per step by probability, then its next shuffled batch. Endless.

    system_sizes: frames per system; batch_size: DeePMD rule (int, list, "auto[:N]", "max:N",
    "filter:N"); n_atoms: atoms per system (needed by the string rules); auto_prob, sys_probs: as
    in :func:`system_probabilities`. Yields lists of global indices into the concatenated systems.
    """

    def __init__(self, system_sizes: Sequence[int], batch_size="auto", *, n_atoms: Optional[Sequence[int]] = None,
                 auto_prob: str = "prob_sys_size", sys_probs: Optional[Sequence[float]] = None, seed: int = 0):
        super().__init__(seed)
        self.system_sizes = [int(s) for s in system_sizes]
        if isinstance(batch_size, str) and n_atoms is None:
            raise ConfigError(f"batch_size {batch_size!r} needs the atoms per system", key="batch_size")
        self.batch_sizes = resolve_batch_sizes(batch_size, n_atoms if n_atoms is not None else [1] * len(system_sizes))
        # "mixed:N": global batches of N frames drawn across systems
        self.mixed_size = self.batch_sizes[0] if str(batch_size).startswith("mixed:") else 0
        self.n_batches = [math.ceil(n / b) if b > 0 else 0 for n, b in zip(self.system_sizes, self.batch_sizes)]
        self.probabilities = system_probabilities(self.n_batches, auto_prob, sys_probs)
        self.offsets = np.concatenate([[0], np.cumsum(self.system_sizes)]).astype(int)
        self.orders: List[Optional[List[int]]] = [None] * len(self.system_sizes)
        self.cursors = [0] * len(self.system_sizes)
        self.last_system: Optional[int] = None

    @classmethod
    def from_systems(cls, systems: Sequence[Sequence[dict]], batch_size="auto", **kwargs) -> "SystemSampler":
        """Sampler over frame lists (e.g. from ``read_systems``); atoms per system from the first frame."""
        from mlpot.data.keys import POSITIONS

        return cls([len(s) for s in systems], batch_size,
                   n_atoms=[len(s[0][POSITIONS]) if len(s) else 1 for s in systems], **kwargs)

    def _next_frames(self, system: int, count: int) -> List[int]:
        """The next ``count`` global indices of ``system``, reshuffling whenever its order runs out."""
        taken: List[int] = []
        while len(taken) < count:
            if self.orders[system] is None or self.cursors[system] >= self.system_sizes[system]:
                self.orders[system] = self.rng.permutation(self.system_sizes[system]).tolist()
                self.cursors[system] = 0
            start = self.cursors[system]
            local = self.orders[system][start:start + count - len(taken)]
            self.cursors[system] = start + len(local)
            taken += [int(self.offsets[system] + i) for i in local]
        return taken

    def _next_mixed_batch(self) -> List[int]:
        """N frames, each from a system drawn with ``probabilities`` (grouped by system in the list)."""
        systems = self.rng.choice(len(self.system_sizes), size=self.mixed_size, p=self.probabilities)
        counts = np.bincount(systems, minlength=len(self.system_sizes))
        self.last_system = None
        return [index for system in np.flatnonzero(counts) for index in self._next_frames(int(system), int(counts[system]))]

    def next_batch(self) -> List[int]:
        """Global frame indices of the next batch; ``last_system`` tells which system it came from
        (None for a mixed batch)."""
        if self.mixed_size:
            return self._next_mixed_batch()
        system = int(self.rng.choice(len(self.system_sizes), p=self.probabilities))
        if self.orders[system] is None or self.cursors[system] >= self.system_sizes[system]:
            self.orders[system] = self.rng.permutation(self.system_sizes[system]).tolist()
            self.cursors[system] = 0
        start = self.cursors[system]
        local = self.orders[system][start:start + self.batch_sizes[system]]
        self.cursors[system] = start + self.batch_sizes[system]
        self.last_system = system
        return [int(self.offsets[system] + i) for i in local]

    def __len__(self) -> int:
        """Batches in one nominal epoch (sum over systems; all frames / N when mixed); iteration never ends."""
        if self.mixed_size:
            return math.ceil(sum(self.system_sizes) / self.mixed_size)
        return int(sum(self.n_batches))

    def steps_for_epochs(self, epochs: float) -> int:
        """Optimizer steps of ``epochs`` passes as DeePMD-kit 3.x counts them for ``numb_epoch``.

        With nb_k batches and sampling probability p_k of system k, one epoch is
        ceil(max_k nb_k / p_k) steps over the systems with p_k > 0 (the steps after which every
        system has been drawn nb_k times on average; sum_k nb_k under prob_sys_size); ``mixed:N``:
        ceil(all frames / N). The run is ceil(epochs · epoch) steps (fractional epochs allowed).
        """
        if self.mixed_size:
            per_epoch = len(self)
        else:
            ratios = [n / p for n, p in zip(self.n_batches, self.probabilities) if p > 0]
            # the tolerance keeps an exact ratio from rounding up through floating-point noise
            per_epoch = math.ceil(max(ratios) - 1e-9) if ratios else 0
        if per_epoch < 1:
            raise ConfigError("the training data give no batch per epoch", key="training.sampler_epochs")
        return max(1, math.ceil(float(epochs) * per_epoch - 1e-9))

    def state_dict(self) -> dict:
        return {"seed": self.seed, "rng": self._rng_state(), "orders": self.orders, "cursors": list(self.cursors)}

    def load_state_dict(self, state: dict) -> None:
        self._set_rng_state(state["rng"])
        self.orders = [None if o is None else list(o) for o in state["orders"]]
        self.cursors = list(state["cursors"])


class EpochSampler(_ResumableSampler):
    """Shuffle all frames each epoch (seeded by seed and epoch) and cut batches of ``batch_size``.

    One iteration covers one epoch (``epoch`` advances at its end); ``drop_last`` drops a short
    final batch. ``n_frames``: frames in the dataset.
    """

    def __init__(self, n_frames: int, batch_size: int, *, shuffle: bool = True, drop_last: bool = False,
                 seed: int = 0):
        super().__init__(seed)
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}", key="batch_size")
        self.n_frames, self.batch_size = int(n_frames), int(batch_size)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.cursor = 0, 0

    def _order(self) -> np.ndarray:
        """This epoch's frame order (a function of seed and epoch only, so resuming needs no RNG state)."""
        if getattr(self, "_cached", (None,))[0] != (self.seed, self.epoch):
            order = np.arange(self.n_frames)
            if self.shuffle:
                order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_frames)
            self._cached = ((self.seed, self.epoch), order)
        return self._cached[1]

    def __len__(self) -> int:
        full, rest = divmod(self.n_frames, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def next_batch(self) -> Optional[List[int]]:
        """Next batch of this epoch, or None at its end (then the next epoch starts)."""
        end = self.cursor + self.batch_size
        if self.cursor >= self.n_frames or (self.drop_last and end > self.n_frames):
            self.epoch, self.cursor = self.epoch + 1, 0
            return None
        batch = self._order()[self.cursor:end].tolist()
        self.cursor = end
        return batch

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch, self.cursor = int(state["seed"]), int(state["epoch"]), int(state["cursor"])


def task_probabilities(weights: Mapping[str, Optional[float]], n_systems: Mapping[str, int]) -> Dict[str, float]:
    """Probability of training each task per step (DeePMD multi-task ``model_prob``, spec §5.3).

    weights: task -> relative weight, or None for the default, the task's number of training
    systems (as DeePMD-kit does per missing entry). The weights are normalised to sum to 1.
    """
    raw = {task: float(n_systems[task] if weight is None else weight) for task, weight in weights.items()}
    for task, value in raw.items():
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"expected a non-negative weight, got {value}", key=["training", "model_prob", task])
    total = sum(raw.values())
    if total <= 0:
        raise ConfigError(f"the task weights sum to {total}; at least one must be positive",
                          key=["training", "model_prob"])
    return {task: value / total for task, value in raw.items()}


def epoch_task_schedule(epoch_steps: Mapping[str, int], epochs: Mapping[str, float]) -> Tuple[Dict[str, float], int]:
    """(task probabilities, run length in steps) of a multi-task run given in epochs per task
    (DeePMD-kit 3.x ``num_epoch_dict``): task t needs E_t L_t steps (L_t: the steps of one pass of
    its system sampler, ``SystemSampler.steps_for_epochs(1)``); p_t = E_t L_t / sum, the run is
    ceil(sum_t E_t L_t) steps."""
    targets = {task: float(epochs[task]) * int(epoch_steps[task]) for task in epoch_steps}
    total = sum(targets.values())
    if not all(math.isfinite(v) and v > 0 for v in targets.values()):
        raise ConfigError(f"every task needs a positive number of epochs and batches, got {targets}",
                          key=["training", "num_epoch_dict"])
    return {task: value / total for task, value in targets.items()}, math.ceil(total)


class TaskSampler:
    """The task of every multi-task training step: task k with probability p_k, independently per step.

    tasks: names in a fixed order; probabilities: one per task (summing to 1); seed: of the
    task-choice RNG, kept apart from the batch samplers so that adding a task's data does not
    change another task's batches. ``state_dict`` holds the RNG position for an exact resume.
    """

    def __init__(self, tasks: Sequence[str], probabilities: Sequence[float], seed: int = 0):
        self.tasks = list(tasks)
        self.probabilities = np.asarray(probabilities, dtype=np.float64)
        if self.probabilities.shape != (len(self.tasks),) or not np.isclose(self.probabilities.sum(), 1.0):
            raise ConfigError(f"need one probability per task summing to 1, got {self.probabilities.tolist()}",
                              key=["training", "model_prob"])
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)

    def next_task(self) -> str:
        """Name of the task of the next step."""
        return self.tasks[int(self.rng.choice(len(self.tasks), p=self.probabilities))]

    def state_dict(self) -> dict:
        return {"seed": self.seed, "tasks": list(self.tasks), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if list(state["tasks"]) != self.tasks:
            raise ValueError(f"checkpoint tasks {state['tasks']} differ from the configured {self.tasks}")
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
