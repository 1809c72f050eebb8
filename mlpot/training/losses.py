"""Loss terms by name, their weights (constant or DeePMD lr-coupled) and error metrics.

A term compares one predicted batch key with the label of the same name. Every term is a
*weighted mean* over the entries that carry the label: with w the per-frame label weight
``batch[weight_key(label)]`` (broadcast to atoms through ``BATCH``) and f the element-wise error,

    L = sum(w * f(r)) / sum(w)          (sum over frames/atoms and components)

so a frame without the label (w = 0) changes neither numerator nor denominator: a missing label
never counts as zero. f is ``mse`` (r²), ``mae`` (|r|) or ``huber`` (delta). For frame-level labels
the residual r is first divided by 1, N, sqrt(N) or N² (``atom_norm``): MACE's ``energy_per_atom`` ((ΔE/N)²), DeePMD's ΔE²/N.

Registered term names (``TERMS``) give the label and default normalisation; any other label key of
``mlpot.data.keys`` is accepted as a term name with no normalisation. Term weights are constant
(``weight``) or DeePMD prefactors p = limit + (start - limit) · lr / start_lr.
``dos_cdf``/``atom_dos_cdf`` compare cumulative sums along the energy axis (DeePMD dos loss "cdf").

DeePMD loss options (spec deepmd.md §4.2-4.3), each reading a per-atom input (term force_mag: MAG_MASK):
* ``generalized_force`` (gf): the residual of frame f is the generalised force error
  Σ_i drdq_i^T (F_i - F_i*), one entry per generalised coordinate (n_frames, n_gen); the term is
  its mean square over frames carrying both forces and ``drdq`` (find_drdq gating).
* ``atom_weight`` on an atomic term: its residual is multiplied by ``ATOM_WEIGHT`` per atom
  (DeePMD ``enable_atomic_weight`` multiplies the difference, so the squared error scales by w²).
* ``atom_ener_coeff`` (loss level): the energy compared with the label is Σ_i c_i E_i with c from
  ``ATOM_ENER_COEFF`` (:meth:`WeightedLoss.prepare`, which the metrics use too, as DeePMD does).

Per-type terms (``per_type``, atomic labels; NequIP's ``per_type`` / ``per_type_coeffs``): the term is
Σ_t c_t L_t / Σ_t c_t over the types t present in the batch, L_t the weighted mean of f(r) over
the atoms of type t (all c_t = 1 for ``per_type: true``). The value is a mean already; with several
data-parallel ranks each rank's value counts equally.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from mlpot.data import keys as K
from mlpot.errors import ConfigError, DataError, suggest
from mlpot.nn.scatter import scatter_sum
from mlpot.training.structured_losses import (cluster_virial_residual, hessian_residual, magnetic_residual,
                                              molecular_forces_value, penalty_value)

__all__ = ["TERMS", "LossTermSpec", "LossTermFn", "WeightedLoss", "resolve_term", "GENERALIZED_FORCE"]

# metric name of the generalised-force error (DeePMD lcurve column rmse_gf); not a batch label
GENERALIZED_FORCE = "generalized_force"


@dataclass(frozen=True)
class LossTermSpec:
    """Defaults of a named term: the label compared and how frame residuals are normalised.

    ``target``: another prediction the label's prediction is compared with (instead of the data),
    present where ``weight_label`` has a weight; ``truncate``: compare only the leading columns of
    the label that the prediction has (multipoles up to the model's L); ``kind``: ``standard``,
    ``cluster_virial``, ``molecular_forces``, ``magnetic``, ``hessian`` or ``penalty`` (``structured_losses.py``).
    """

    label: str
    atom_norm: str = "none"  # none | per_atom | sqrt | per_atom_sq
    atom_pref: bool = False  # DeePMD "pf": per-atom force weights from ATOM_PREF
    cumulative: bool = False  # DeePMD dos "cdf"/"acdf": compare running sums along the last axis
    generalized: bool = False  # DeePMD "gf": force residuals projected on DRDQ, per frame
    target: Optional[str] = None
    weight_label: Optional[str] = None
    truncate: bool = False
    kind: str = "standard"


TERMS: Dict[str, LossTermSpec] = {
    "energy": LossTermSpec(K.ENERGY),
    "energy_per_atom": LossTermSpec(K.ENERGY, "per_atom"),
    "forces": LossTermSpec(K.FORCES),
    "atom_pref": LossTermSpec(K.FORCES, atom_pref=True),
    "virial": LossTermSpec(K.VIRIAL),
    "virial_per_atom": LossTermSpec(K.VIRIAL, "per_atom"),
    "stress": LossTermSpec(K.STRESS),
    "total_charge_per_atom": LossTermSpec(K.TOTAL_CHARGE, "per_atom"),
    "dipole_per_atom": LossTermSpec(K.DIPOLE, "per_atom"),
    "polarizability_per_atom": LossTermSpec(K.POLARIZABILITY, "per_atom"),
    "fermi_level_per_atom": LossTermSpec(K.FERMI_LEVEL, "per_atom"),
    # self-consistent electrostatics (MACE-SCF names, spec mace_scf.md §4)
    "atomic_multipoles": LossTermSpec(K.ATOMIC_MULTIPOLES, truncate=True),
    "esps": LossTermSpec(K.ESPS, target=K.REFERENCE_ESPS, weight_label=K.ATOMIC_MULTIPOLES),
    "field_features": LossTermSpec(K.FIELD_FEATURES, target=K.REFERENCE_FIELD_FEATURES, weight_label=K.ATOMIC_MULTIPOLES),
    "cluster_virial": LossTermSpec(K.FORCES, kind="cluster_virial"),
    "cluster_virial_per_atom": LossTermSpec(K.FORCES, "per_atom", kind="cluster_virial"),
    "molecular_forces": LossTermSpec(K.FORCES, kind="molecular_forces"),
    "fixedpoint_scf_stability": LossTermSpec(K.SCF_STABILITY, kind="penalty"),
    "dos_cdf": LossTermSpec(K.DOS, cumulative=True),
    "atom_dos_cdf": LossTermSpec(K.ATOM_DOS, cumulative=True),
    GENERALIZED_FORCE: LossTermSpec(K.FORCES, generalized=True),
    "force_mag": LossTermSpec(K.FORCE_MAG, kind="magnetic"),
    "hessian": LossTermSpec(K.HESSIAN, kind="hessian"),  # DeePMD "h": mean over the (3N)² entries
}
_LABEL_TERMS = {label: LossTermSpec(label) for label in K.LABELS} | {K.TOTAL_CHARGE: LossTermSpec(K.TOTAL_CHARGE)}

# per-atom inputs -> the loss option that reads them (for error messages)
_OPTION_OF = {K.ATOM_ENER_COEFF: "atom_ener_coeff (DeePMD loss/enable_atom_ener_coeff)",
              K.ATOM_WEIGHT: "atom_weight (DeePMD loss/enable_atomic_weight)"}

_NORM_POWER = {"none": 0.0, "sqrt": 0.5, "per_atom": 1.0, "per_atom_sq": 2.0}  # residual / N^power
# DeePMD "ener" loss (spec 4.2): energy and virial residuals scaled so that MSE gives ΔE²/N
_DEEPMD_NORM = {(K.ENERGY, "mse", False): "sqrt", (K.VIRIAL, "mse", False): "sqrt"}


def resolve_term(name: str, *, file: Optional[str] = None) -> LossTermSpec:
    """Spec of term ``name``; unknown names raise ConfigError naming ``loss.terms.<name>``."""
    if name in TERMS:
        return TERMS[name]
    if name in _LABEL_TERMS:
        return _LABEL_TERMS[name]
    valid = sorted(set(TERMS) | set(_LABEL_TERMS))
    hint = suggest(name, valid)
    raise ConfigError(f"unknown loss term; valid: {', '.join(valid)}", file=file, key=["loss", "terms", name],
                      hint=f"did you mean {hint!r}?" if hint else None)


def _expand(weight: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape + (1,) * (like.ndim - weight.ndim)).expand_as(like)


class LossTermFn:
    """One term: ``__call__(pred, batch) -> (value, present)``; value is a 0-d tensor.

    function: mse | mae | huber; atom_norm: none | per_atom | sqrt | per_atom_sq (frame labels);
    relative: forces residual divided by (|F*| + relative) (DeePMD relative_f); atom_weight:
    atomic residuals multiplied by ``ATOM_WEIGHT`` (DeePMD enable_atomic_weight); vector_norm:
    forces compared by the per-atom norm |ΔF_k| (eV/Å, one entry per atom; DeePMD f_use_norm);
    atom_pref_default: the atom_pref term's per-atom weight for a batch without ``ATOM_PREF``
    (DeePMD use_default_pf); unset, such a batch does not count in the term (find_atom_pref = 0).
    """

    def __init__(self, spec: LossTermSpec, function: str = "mse", atom_norm: Optional[str] = None,
                 huber_delta: float = 0.01, relative: Optional[float] = None, atom_weight: bool = False,
                 vector_norm: bool = False, atom_pref_default: Optional[float] = None,
                 type_weights: Optional[Sequence[float]] = None,
                 penalty: Tuple[float, bool, float] = (1.0, False, 10.0)):
        self.spec = spec
        self.penalty = penalty  # (offset, smooth, beta) of a penalty term
        self.label = spec.label
        self.level = K.level_of(spec.label)
        self.atom_pref = spec.atom_pref
        self.cumulative = spec.cumulative
        self.generalized = spec.generalized
        self.atom_weight = bool(atom_weight)
        if self.atom_weight and self.level != "atom":
            raise ConfigError(f"atom_weight applies to atomic labels, not {spec.label!r}", key=["loss", "terms"])
        self.function = function
        self.power = _NORM_POWER[atom_norm or spec.atom_norm]
        self.huber_delta = huber_delta
        self.relative = relative
        self.vector_norm = bool(vector_norm)
        if self.vector_norm and (spec.label != K.FORCES or spec.generalized):
            raise ConfigError("vector_norm applies to force terms only", key=["loss", "terms"])
        self.atom_pref_default = atom_pref_default
        if type_weights is not None and self.level != "atom":
            raise ConfigError(f"per_type applies to atomic labels, not {spec.label!r}", key=["loss", "terms"])
        self.type_weights = None if type_weights is None else torch.tensor([float(w) for w in type_weights])

    def residual_and_weight(self, pred, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """(residual, weight) of matching shape (n_items, *components)."""
        if self.spec.kind != "standard" or self.spec.target is not None:
            return self._structured(pred, batch)
        target = batch[self.label]
        if self.spec.truncate:
            target = target[..., : pred[self.label].shape[-1]]
        residual = pred[self.label].to(target.dtype) - target
        if self.cumulative:  # cumsum(pred) - cumsum(label) = cumsum(pred - label)
            residual = residual.cumsum(dim=-1)
        weight = batch[K.weight_key(self.label)].to(target.dtype)
        if self.generalized:
            return self._generalized(residual, weight, batch)
        if self.atom_weight:
            residual = residual * _expand(batch[K.ATOM_WEIGHT].to(target.dtype), residual)
        if self.level == "atom":
            weight = weight[batch[K.BATCH]]
            if self.atom_pref and K.ATOM_PREF not in batch and self.atom_pref_default is None:
                # DeePMD: find_atom_pref = 0 for a system without atom_pref.npy, the term is off there
                weight = torch.zeros_like(weight)
        elif self.power:
            n_atoms = batch[K.N_ATOMS].to(target.dtype)
            residual = residual / _expand(n_atoms ** self.power, residual)
        if self.relative is not None and self.label == K.FORCES:
            residual = residual / (target.norm(dim=-1, keepdim=True) + self.relative)
        if self.vector_norm:  # DeePMD f_use_norm: one entry |ΔF_k| per atom, shape (n_atoms, 1)
            residual = torch.linalg.vector_norm(residual, dim=-1, keepdim=True)
        return residual, _expand(weight, residual)

    def _structured(self, pred, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """Residuals of the terms of ``structured_losses.py`` and of prediction-vs-prediction terms."""
        kind = self.spec.kind
        if kind == "cluster_virial":
            return cluster_virial_residual(pred, batch, per_atom=self.power > 0)
        if kind == "molecular_forces":
            return molecular_forces_value(pred, batch)
        if kind == "magnetic":  # DeePMD ener_spin fm
            return magnetic_residual(pred, batch)
        if kind == "hessian":
            return hessian_residual(pred, batch)
        value = pred[self.label]
        if kind == "penalty":
            return value, torch.ones_like(value)
        target = pred[self.spec.target].detach()
        weight = batch[K.weight_key(self.spec.weight_label)].to(value.dtype)
        weight = weight.reshape(weight.shape[0], -1).amax(1)
        if K.level_of(self.label) == "atom":
            weight = weight[batch[K.BATCH]]
        residual = value - target
        return residual, _expand(weight, residual)

    def _atom_pref(self, batch, like: torch.Tensor) -> torch.Tensor:
        """Per-atom force weights (n_atoms,) of the atom_pref term; atom_pref_default where the batch has none."""
        if K.ATOM_PREF in batch:
            return batch[K.ATOM_PREF].to(like.dtype)
        return torch.full(like.shape[:1], float(self.atom_pref_default or 0.0), dtype=like.dtype, device=like.device)

    @staticmethod
    def _generalized(force_residual, force_weight, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """(Σ_i drdq_i^T ΔF_i per frame (n_frames, n_gen), weight = forces present · drdq present)."""
        n_atoms, n_frames = force_residual.shape[0], batch[K.N_ATOMS].shape[0]
        drdq = batch[K.DRDQ].to(force_residual.dtype).reshape(n_atoms, 3, -1)  # (n_atoms, 3, n_gen)
        per_atom = torch.einsum("ia,iag->ig", force_residual, drdq)
        residual = scatter_sum(per_atom, batch[K.BATCH], n_frames)
        weight = force_weight * batch[K.weight_key(K.DRDQ)].to(force_residual.dtype)
        return residual, _expand(weight, residual)

    def present(self, batch) -> bool:
        """True when ``batch`` holds the label (and the forces' DRDQ for gf) in some frame.

        A batch drawn from a system without the label has no such key at all (DeePMD find_* = 0):
        the term then has weight 0 in this batch, like a frame whose label weight is 0.
        """
        keys = (self.label, K.weight_key(self.label)) + ((K.DRDQ, K.weight_key(K.DRDQ)) if self.generalized else ())
        return all(key in batch for key in keys)

    def parts(self, pred, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """(Σ w·f(r), Σ w): the term is their ratio (denominators may be summed over ranks first).

        Without the label in the batch: (0, 0), the 0 taken from the prediction so that a step whose
        batch carries no label of any term still back-propagates (zero gradients, as DeePMD-kit's
        find_* = 0 terms do).
        """
        if not self.present(batch):  # (a Hessian is only predicted for batches that carry it)
            prediction = pred[self.label] if self.label in pred else next(iter(pred.values()))
            return (prediction * 0).sum(), prediction.new_zeros((), dtype=torch.float64)
        residual, weight = self.residual_and_weight(pred, batch)
        if self.spec.kind in ("penalty", "molecular_forces"):  # already a penalty or a square
            offset, smooth, beta = self.penalty
            values = penalty_value(residual, offset, smooth, beta) if self.spec.kind == "penalty" else residual
            return (weight * values).sum(), weight.sum().detach()
        if self.function == "mse":
            elementwise = residual.square()
        elif self.function == "mae":
            elementwise = residual.abs()
        else:
            elementwise = torch.nn.functional.huber_loss(
                residual, torch.zeros_like(residual), reduction="none", delta=self.huber_delta)
        if self.atom_pref:
            # DeePMD pf: mean over components of atom_pref · f(ΔF); the prefs weigh the numerator
            # only, so the term is a plain component mean when every pref is 1
            elementwise = elementwise * _expand(self._atom_pref(batch, residual), elementwise)
        if self.type_weights is not None:
            return self._per_type_mean(weight * elementwise, weight, batch[K.ATOM_TYPES])
        return (weight * elementwise).sum(), weight.sum().detach()

    def _per_type_mean(self, weighted: torch.Tensor, weight: torch.Tensor, types: torch.Tensor):
        """(Σ_t c_t L_t / Σ_t c_t over types present, 1): L_t the mean over the atoms of type t."""
        n_types = len(self.type_weights)
        numerators = scatter_sum(weighted.reshape(len(types), -1).sum(1), types, n_types)
        denominators = scatter_sum(weight.reshape(len(types), -1).sum(1), types, n_types).detach()
        present = denominators > 0
        coefficients = self.type_weights.to(weighted.dtype) * present.to(weighted.dtype)
        means = numerators / torch.where(present, denominators, torch.ones_like(denominators))
        total = coefficients.sum()
        value = (coefficients * means).sum() / torch.where(total > 0, total, torch.ones_like(total))
        return value, (total > 0).to(weighted.dtype)

    def __call__(self, pred, batch) -> Tuple[torch.Tensor, bool]:
        numerator, denominator = self.parts(pred, batch)
        if float(denominator) <= 0.0:
            return numerator.new_zeros(()), False
        return numerator / denominator, True


class WeightedLoss:
    """Total loss L = Σ_t p_t · L_t over the configured terms.

    terms: name -> :class:`mlpot.training.schema.LossTerm` (or any object with the same attributes).
    loss_type "ener" applies DeePMD's normalisation defaults (ΔE²/N and ΔΞ²/N for MSE, or /N² with
    ``intensive``; ΔE/N inside MAE/Huber). atom_ener_coeff: compare E = Σ_i c_i E_i (see
    :meth:`prepare`).
    """

    def __init__(self, terms: Mapping[str, object], loss_type: str = "native", intensive: bool = False,
                 file: Optional[str] = None, atom_ener_coeff: bool = False, type_map: Optional[Sequence[str]] = None):
        self.terms = dict(terms)
        self.file = file
        self.atom_ener_coeff = bool(atom_ener_coeff)
        self.fns: Dict[str, LossTermFn] = {}
        for name, term in self.terms.items():
            label = getattr(term, "label", None)
            if label is None:
                spec = resolve_term(name, file=file)
            else:  # any name comparing an explicit label key
                resolve_term(label, file=file)
                base = TERMS.get(name, LossTermSpec(label))
                spec = LossTermSpec(label, base.atom_norm, base.atom_pref, base.cumulative, base.generalized,
                                    base.target, base.weight_label, base.truncate, base.kind)
            atom_norm = term.atom_norm
            if atom_norm is None and loss_type == "ener" and spec.label in (K.ENERGY, K.VIRIAL):
                atom_norm = "per_atom" if (intensive or term.function != "mse") else "sqrt"
            self.fns[name] = LossTermFn(spec, term.function, atom_norm, term.huber_delta, term.relative,
                                        atom_weight=getattr(term, "atom_weight", False),
                                        vector_norm=getattr(term, "vector_norm", False),
                                        atom_pref_default=getattr(term, "atom_pref_default", None),
                                        type_weights=_type_weights(getattr(term, "per_type", False), type_map, name, file),
                                        penalty=(getattr(term, "offset", 1.0), getattr(term, "smooth", False),
                                                 getattr(term, "beta", 10.0)))

    @property
    def labels(self) -> Tuple[str, ...]:
        """Labels the model must predict (e.g. FORCES tells the trainer to compute derivatives)."""
        return tuple(dict.fromkeys(fn.label for fn in self.fns.values()))

    @property
    def metric_labels(self) -> Tuple[str, ...]:
        """``labels`` plus GENERALIZED_FORCE when a term projects forces on DRDQ (DeePMD rmse_gf)."""
        extra = (GENERALIZED_FORCE,) if any(fn.generalized for fn in self.fns.values()) else ()
        return self.labels + extra

    @property
    def required_inputs(self) -> Tuple[str, ...]:
        """Per-atom inputs every frame must hold: ATOM_ENER_COEFF, ATOM_WEIGHT when an option uses them."""
        keys = [K.ATOM_ENER_COEFF] if self.atom_ener_coeff else []
        keys += [K.ATOM_WEIGHT] if any(fn.atom_weight for fn in self.fns.values()) else []
        return tuple(keys)

    @property
    def gated_inputs(self) -> Tuple[str, ...]:
        """Inputs that gate a term per frame (DRDQ for generalized_force): some frames must hold them."""
        return (K.DRDQ,) if any(fn.generalized for fn in self.fns.values()) else ()

    def check_data(self, frames: Sequence[dict]) -> None:
        """DataError naming the system and key when the data lack an input a loss option needs.

        frames: a dataset's frames (a FrameList, possibly concatenated: ``sources``/``offsets`` give
        the systems). ATOM_ENER_COEFF / ATOM_WEIGHT must be in every frame (DeePMD-kit would take 1
        silently; here a missing file is an error, so a misnamed file is not mistaken for plain sums);
        DRDQ must be in some frame, with 3 · n_generalized values per atom.
        """
        sources = list(getattr(frames, "sources", None) or [getattr(frames, "source", None) or "dataset"])
        offsets = list(getattr(frames, "offsets", None) or [0, len(frames)])
        if len(offsets) != len(sources) + 1:
            sources, offsets = [sources[0]], [0, len(frames)]
        for key in self.required_inputs:
            for source, start, stop in zip(sources, offsets[:-1], offsets[1:]):
                if any(key not in frames[i] for i in range(start, stop)):
                    raise DataError(f"no {key}.npy (per-atom input of loss option {_OPTION_OF[key]}); DeePMD-kit "
                                    f"would use 1 for every atom: write {key}.npy of ones to train as it does",
                                    file=source, key=key)
        for name, fn in self.fns.items():
            if not fn.generalized:
                continue
            have = [i for i in range(len(frames)) if K.DRDQ in frames[i]]
            if not have:
                raise DataError(f"no system has {K.DRDQ}.npy, needed by the generalised-force term "
                                f"loss.terms.{name}", file=sources[0], key=K.DRDQ)
            expected = getattr(self.terms[name], "n_generalized", None)
            for i in have if expected else ():
                width = frames[i][K.DRDQ].shape[-1]
                if width != 3 * expected:
                    system = max(s for s in range(len(sources)) if offsets[s] <= i)
                    raise DataError(f"has {width} values per atom, expected 3 x numb_generalized_coord = "
                                    f"{3 * expected}", file=sources[system], frame=i - offsets[system], key=K.DRDQ)

    def check_labels(self, frames: Sequence[dict], what: str = "training data") -> None:
        """ConfigError naming the term and the systems when no frame of ``frames`` carries the label of
        a term whose prefactor is not 0 (such a term could never be trained). A label present in some
        systems only is fine: the others have weight 0 for it (DeePMD find_* = 0)."""
        sources = list(getattr(frames, "sources", None) or [getattr(frames, "source", None) or "dataset"])
        for name, fn in self.fns.items():
            term = self.terms[name]
            prefs = (term.start_pref, term.limit_pref) if term.start_pref is not None else (term.weight,)
            if all(float(p or 0.0) == 0.0 for p in prefs):
                continue  # a prefactor of 0 needs no label
            weight_name = K.weight_key(fn.label)
            if not any(fn.label in frame and float(np.max(frame.get(weight_name, 1.0))) > 0 for frame in frames):
                raise ConfigError(f"loss term {name!r} compares the label {fn.label!r}, which no frame of the "
                                  f"{what} has ({', '.join(sources)}); add the label to the data or set the "
                                  f"term's prefactor to 0", file=self.file, key=["loss", "terms", name])

    def prepare(self, pred: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Predictions as the loss compares them: with ``atom_ener_coeff`` the energy is
        E_f = Σ_{i in f} c_i E_i (eV, (n_frames,)) from ATOM_ENERGY (n_atoms,) and ATOM_ENER_COEFF;
        forces stay -dE/dr of the plain sum (DeePMD)."""
        if not self.atom_ener_coeff or K.ENERGY not in pred:
            return pred
        atomic = pred[K.ATOM_ENERGY]
        coeff = batch[K.ATOM_ENER_COEFF].to(atomic.dtype)
        return {**pred, K.ENERGY: scatter_sum(coeff * atomic, batch[K.BATCH], batch[K.N_ATOMS].shape[0])}

    def prefactor(self, name: str, lr_ratio: float) -> float:
        term = self.terms[name]
        if term.start_pref is not None:
            return term.limit_pref + (term.start_pref - term.limit_pref) * lr_ratio
        return term.weight

    def __call__(self, pred, batch, lr_ratio: float = 1.0, reduce: Optional[Callable] = None):
        """(total 0-d tensor, {name: weighted term}, {name: unweighted term}) for present labels.

        reduce: sums a tensor over data-parallel ranks; the denominators (label weights) are summed
        before dividing, so each rank returns its share of the global weighted mean.
        """
        parts = {name: fn.parts(pred, batch) for name, fn in self.fns.items()}
        denominators = torch.stack([d for _, d in parts.values()]) if parts else None
        if reduce is not None and denominators is not None:
            denominators = reduce(denominators)
        weighted, raw = {}, {}
        total = None
        for index, (name, (numerator, _)) in enumerate(parts.items()):
            denominator = denominators[index]
            if float(denominator) <= 0.0:
                continue
            raw[name] = numerator / denominator
            weighted[name] = self.prefactor(name, lr_ratio) * raw[name]
            total = weighted[name] if total is None else total + weighted[name]
        if total is None:  # no term has a label in this batch: a zero that keeps the graph
            total = sum(numerator for numerator, _ in parts.values()) if parts else next(iter(pred.values())).new_zeros(())
        return total, weighted, raw


def _type_weights(per_type, type_map: Optional[Sequence[str]], name: str, file: Optional[str]) -> Optional[List[float]]:
    """Per-type weights of a ``per_type`` term in type_map order (None when the term is not per type)."""
    if per_type is False or per_type is None:
        return None
    key = ["loss", "terms", name, "per_type"]
    if type_map is None:
        raise ConfigError("per_type needs the model's type map", file=file, key=key)
    if per_type is True:
        return [1.0] * len(type_map)
    unknown, missing = sorted(set(per_type) - set(type_map)), [t for t in type_map if t not in per_type]
    if unknown or missing or any(float(v) <= 0 for v in per_type.values()):
        raise ConfigError(f"give a positive weight for every type of {list(type_map)} (unknown {unknown}, missing {missing})",
                          file=file, key=key)
    return [float(per_type[t]) for t in type_map]
