"""The MACE family's hooks into the training engine (``mlpot.models.registry.ModelFamily``).

:func:`resolve_from_data` fills in, from the training data of the run (the engine's DataProbe:
the training split, isolated-atom frames set aside), what mace_run_train computes before it builds
the model; only keys the section does not give are computed:

* ``atomic_numbers``: the elements of the training data, sorted;
* ``E0s`` (eV per element): the energies of the ``config_type=IsolatedAtom`` frames of the training
  files when there are any (they take precedence over the option, as in mace_run_train; every
  element needs one); else ``"average"``: the least-squares solution E0 of counts · E0 ≈ E over the
  training frames (numpy ``lstsq``, rcond None: the minimum-norm solution for data of one fixed
  composition); a ``.json`` file {Z: eV}; a mapping or list as given. ``"estimated"`` and
  ``"foundation"`` need a foundation model (:func:`prepare_finetune`);
* ``avg_num_neighbors``: the mean neighbour count within ``r_max`` over the training atoms that have
  at least one neighbour;
* with ``scaling``, the per-atom interaction energy e_f = (E_f - Σ_i E0_{Z_i}) / N_f of every
  training frame f gives ``atomic_inter_shift`` = mean_f e_f and ``atomic_inter_scale`` =
  ``std_scaling``: the standard deviation of e_f (n - 1 in the denominator), ``rms_forces_scaling``:
  the root mean square force component, ``no_scaling``: 1 (shift 0); a zero scale becomes 1.
  ``mace_run_train --model MACE`` fixes the shift at 0 (the front-end writes it).

The resolved section holds plain numbers, so ``model.config`` rebuilds the model without data.

:func:`prepare_finetune` (``mlpot train --finetune MODEL``, mace_run_train ``--foundation_model``):
the architecture, element table, ``avg_num_neighbors``, scale and shift are the foundation's
(mace_run_train takes them from the foundation model too); the input's ``E0s`` stays: "average", a
mapping, a list or isolated atoms are resolved from the new data, ``"foundation"`` keeps the
foundation's, ``"estimated"`` starts from the foundation's and, once the data are read, adds the
least-squares fit of (E - prediction) over the training frames to them (mace's estimate, done as
the change-by-statistic of ``mlpot.models.output_bias`` on the E0s). The foundation's elements are
all kept (mace_run_train's ``--foundation_model_elements``); for the elements of the data the model
is the same function as mace_run_train's element-filtered copy.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from mlpot.errors import ConfigError
from mlpot.models.base import FineTune
from mlpot.models.equivariant.mace.model import MACE
from mlpot.models.equivariant.mace.section import check_mace_section, element_energies
from mlpot.models.output_bias import change_energy_bias

__all__ = ["check_section", "resolve_from_data", "prepare_finetune", "average_e0s", "scale_and_shift"]


def check_section(section: Dict[str, Any]) -> None:
    """Validate a MACE model section (ConfigError at the key path, with "did you mean")."""
    check_mace_section(section)


def _symbols(numbers: Sequence[int]) -> List[str]:
    from ase.data import chemical_symbols

    return [chemical_symbols[int(z)] for z in numbers]


def average_e0s(counts: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """mace's "average" E0s: least squares of counts (n_frames, n_elements) · E0 ≈ energies (eV)."""
    if len(energies) == 0:
        raise ConfigError("E0s 'average' needs training frames with an energy", key="model.E0s")
    return np.linalg.lstsq(np.asarray(counts, dtype=np.float64), np.asarray(energies, dtype=np.float64), rcond=None)[0]


def scale_and_shift(scaling: str, counts: np.ndarray, energies: np.ndarray, e0s: np.ndarray,
                    forces_rms: Optional[float]) -> Dict[str, float]:
    """{"atomic_inter_scale", "atomic_inter_shift"} of mace's ``--scaling`` (module docstring)."""
    if scaling == "no_scaling":
        return {"atomic_inter_scale": 1.0, "atomic_inter_shift": 0.0}
    if len(energies) == 0:
        raise ConfigError(f"scaling {scaling!r} needs training frames with an energy", key="model.scaling")
    per_atom = (energies - counts @ e0s) / counts.sum(1)
    if scaling == "std_scaling":
        scale = float(np.std(per_atom, ddof=1)) if len(per_atom) > 1 else 0.0
    else:
        if forces_rms is None:
            raise ConfigError("rms_forces_scaling needs training frames with forces", key="model.scaling")
        scale = float(forces_rms)
    return {"atomic_inter_scale": scale if scale != 0.0 else 1.0, "atomic_inter_shift": float(per_atom.mean())}


def _e0s(section: Mapping[str, Any], probe, type_map: List[str], numbers: List[int]) -> List[float]:
    isolated = probe.isolated_atom_energies(type_map)
    if isolated:
        missing = [z for t, z in enumerate(numbers) if t not in isolated]
        if missing:
            raise ConfigError(f"the training data hold isolated atoms (config_type=IsolatedAtom) but none of atomic "
                              f"numbers {missing}: give every element one", key="model.E0s")
        return [isolated[t] for t in range(len(numbers))]
    e0s = section.get("E0s")
    if e0s is None:
        raise ConfigError("E0s not found in the training file (no config_type=IsolatedAtom frames) and not given: "
                          "give 'average', a mapping {Z: eV} or a list", key="model.E0s")
    if e0s in ("estimated", "foundation"):
        raise ConfigError(f"E0s {e0s!r} needs a foundation model (mace_run_train --foundation_model, mlpot train "
                          "--finetune MODEL)", key="model.E0s")
    if e0s == "average":
        return [float(e) for e in average_e0s(*probe.energy_composition(type_map))]
    if isinstance(e0s, str):  # a .json file {Z: eV}
        try:
            with open(e0s) as handle:
                e0s = {int(z): float(e) for z, e in json.load(handle).items()}
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(f"cannot read the E0s file {e0s}: {exc}", key="model.E0s") from None
    return e0s


def resolve_from_data(section: Dict[str, Any], probes: Mapping[str, Any]) -> Dict[str, Any]:
    """The MACE section with what depends on the training data filled in (module docstring);
    ``probes``: task -> DataProbe ("" for single-task training)."""
    if set(probes) != {""}:
        raise ConfigError("not supported yet: multi-task training of a MACE model", key="tasks")
    probe = probes[""]
    check_mace_section(section)
    out = copy.deepcopy(dict(section))
    numbers = sorted(int(z) for z in (out.get("atomic_numbers") or probe.atomic_numbers()))
    type_map = _symbols(numbers)
    out["atomic_numbers"] = numbers
    out["E0s"] = _e0s(section, probe, type_map, numbers)
    if "avg_num_neighbors" not in section:
        out["avg_num_neighbors"] = probe.mean_neighbors(float(out.get("r_max", 5.0)), type_map)
    scaling = out.pop("scaling", None)
    if scaling is not None:
        e0s = np.asarray(element_energies(out, numbers))
        counts, energies = probe.energy_composition(type_map) if scaling != "no_scaling" else (None, None)
        forces_rms = probe.forces_rms(type_map) if scaling == "rms_forces_scaling" else None
        fitted = scale_and_shift(scaling, counts, energies, e0s, forces_rms)
        out.update({key: value for key, value in fitted.items() if key not in section})
    return out


def prepare_finetune(config, pretrained: torch.nn.Module, *, branch: Optional[str] = None,
                     use_pretrain_script: bool = False, file: Optional[str] = None,
                     pretrained_file: str = "pretrained") -> FineTune:
    """``config.model`` (in place) becomes the foundation's section with the input's E0s option;
    returns the initial weights and the E0 estimate to run on the statistics sample (module docstring)."""
    if not isinstance(pretrained, MACE):
        raise ConfigError(f"{pretrained_file} is a {type(pretrained).__name__}, not a MACE model: a MACE input "
                          "fine-tunes a MACE foundation model", file=file, key="--finetune")
    if branch is not None:
        raise ConfigError("not supported yet: --model-branch with a MACE foundation model (multi-head MACE)",
                          file=file, key="--model-branch")
    requested = config.model.get("E0s")
    section = copy.deepcopy(dict(pretrained.config))
    section.pop("scaling", None)
    foundation_e0s = [float(e) for e in pretrained.atomic_energies_fn.atomic_energies.reshape(-1)]
    section["E0s"] = foundation_e0s if requested in ("foundation", "estimated") else requested
    config.model = section
    weights = {k: v.detach().clone() for k, v in pretrained.state_dict().items()}

    def after_statistics(model, samples, write) -> None:
        # the weights brought the foundation's E0s: the run's are those resolved into its section
        with torch.no_grad():
            model.atomic_energies_fn.atomic_energies.copy_(torch.as_tensor(
                element_energies(model.config, model.atomic_numbers_list)).reshape(1, -1))
        if requested != "estimated":
            return

        old, new = change_energy_bias(model, samples, "change", file=file)
        write("fine-tuning: E0s estimated from the foundation model's errors: " + ", ".join(
            f"{t} {a:.6g} -> {b:.6g}" for t, a, b in zip(model.type_map, old, new)) + " eV")

    return FineTune(weights, after_statistics)
