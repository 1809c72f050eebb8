"""Loss terms by name, their weights (constant or DeePMD lr-coupled) and error metrics.

A term compares one predicted batch key with the label of the same name. Every term is a
*weighted mean* over the entries that carry the label: with w the per-frame label weight
``batch[weight_key(label)]`` (broadcast to atoms through ``BATCH``) and f the element-wise error,

    L = sum(w * f(r)) / sum(w)          (sum over frames/atoms and components)

so a frame without the label (w = 0) changes neither numerator nor denominator: a missing label
never counts as zero. f is ``mse`` (r²), ``mae`` (|r|) or ``huber`` (delta). For frame-level labels
the residual r is first divided by 1, N, sqrt(N) or N² (``atom_norm``), which gives MACE's
``energy_per_atom`` ((ΔE/N)²) and DeePMD's legacy energy term (ΔE²/N, spec deepmd.md §4.2).

Registered term names (``TERMS``) give the label and default normalisation; any other label key of
``mlpot.data.keys`` is accepted as a term name with no normalisation. Term weights are constant
(``weight``) or DeePMD prefactors p = limit + (start - limit) · lr / start_lr.
``dos_cdf``/``atom_dos_cdf`` compare cumulative sums along the energy axis (DeePMD dos loss "cdf").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple

import torch

from mlpot.data import keys as K
from mlpot.errors import ConfigError, suggest

__all__ = ["TERMS", "LossTermSpec", "LossTermFn", "WeightedLoss", "resolve_term", "label_error_sums", "rmse_mae"]


@dataclass(frozen=True)
class LossTermSpec:
    """Defaults of a named term: the label compared and how frame residuals are normalised."""

    label: str
    atom_norm: str = "none"  # none | per_atom | sqrt | per_atom_sq
    atom_pref: bool = False  # DeePMD "pf": per-atom force weights from ATOM_PREF
    cumulative: bool = False  # DeePMD dos "cdf"/"acdf": compare running sums along the last axis


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
    "dos_cdf": LossTermSpec(K.DOS, cumulative=True),
    "atom_dos_cdf": LossTermSpec(K.ATOM_DOS, cumulative=True),
}
_LABEL_TERMS = {label: LossTermSpec(label) for label in K.LABELS} | {K.TOTAL_CHARGE: LossTermSpec(K.TOTAL_CHARGE)}

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


def _norm_power(atom_norm: str) -> float:
    return {"none": 0.0, "sqrt": 0.5, "per_atom": 1.0, "per_atom_sq": 2.0}[atom_norm]


def _expand(weight: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape + (1,) * (like.ndim - weight.ndim)).expand_as(like)


class LossTermFn:
    """One term: ``__call__(pred, batch) -> (value, present)``; value is a 0-d tensor.

    function: mse | mae | huber; atom_norm: none | per_atom | sqrt | per_atom_sq (frame labels);
    relative: forces residual divided by (|F*| + relative) (DeePMD relative_f).
    """

    def __init__(self, spec: LossTermSpec, function: str = "mse", atom_norm: Optional[str] = None,
                 huber_delta: float = 0.01, relative: Optional[float] = None):
        self.label = spec.label
        self.level = K.level_of(spec.label)
        self.atom_pref = spec.atom_pref
        self.cumulative = spec.cumulative
        self.function = function
        self.power = _norm_power(atom_norm or spec.atom_norm)
        self.huber_delta = huber_delta
        self.relative = relative

    def residual_and_weight(self, pred, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """(residual, weight) of matching shape (n_items, *components)."""
        target = batch[self.label]
        residual = pred[self.label].to(target.dtype) - target
        if self.cumulative:  # cumsum(pred) - cumsum(label) = cumsum(pred - label)
            residual = residual.cumsum(dim=-1)
        weight = batch[K.weight_key(self.label)].to(target.dtype)
        if self.level == "atom":
            weight = weight[batch[K.BATCH]]
            if self.atom_pref:
                weight = weight * batch[K.ATOM_PREF].to(target.dtype)
        elif self.power:
            n_atoms = batch[K.N_ATOMS].to(target.dtype)
            residual = residual / _expand(n_atoms ** self.power, residual)
        if self.relative is not None and self.label == K.FORCES:
            residual = residual / (target.norm(dim=-1, keepdim=True) + self.relative)
        return residual, _expand(weight, residual)

    def parts(self, pred, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """(Σ w·f(r), Σ w): the term is their ratio (denominators may be summed over ranks first)."""
        residual, weight = self.residual_and_weight(pred, batch)
        if self.function == "mse":
            elementwise = residual.square()
        elif self.function == "mae":
            elementwise = residual.abs()
        else:
            elementwise = torch.nn.functional.huber_loss(
                residual, torch.zeros_like(residual), reduction="none", delta=self.huber_delta)
        return (weight * elementwise).sum(), weight.sum().detach()

    def __call__(self, pred, batch) -> Tuple[torch.Tensor, bool]:
        numerator, denominator = self.parts(pred, batch)
        if float(denominator) <= 0.0:
            return numerator.new_zeros(()), False
        return numerator / denominator, True


class WeightedLoss:
    """Total loss L = Σ_t p_t · L_t over the configured terms.

    terms: name -> :class:`mlpot.config.schema.LossTerm` (or any object with the same attributes).
    loss_type "ener" applies DeePMD's normalisation defaults (ΔE²/N and ΔΞ²/N for MSE, or /N² with
    ``intensive``; ΔE/N inside MAE/Huber).
    """

    def __init__(self, terms: Mapping[str, object], loss_type: str = "native", intensive: bool = False,
                 file: Optional[str] = None):
        self.terms = dict(terms)
        self.fns: Dict[str, LossTermFn] = {}
        for name, term in self.terms.items():
            label = getattr(term, "label", None)
            if label is None:
                spec = resolve_term(name, file=file)
            else:  # any name comparing an explicit label key
                resolve_term(label, file=file)
                base = TERMS.get(name, LossTermSpec(label))
                spec = LossTermSpec(label, base.atom_norm, base.atom_pref, base.cumulative)
            atom_norm = term.atom_norm
            if atom_norm is None and loss_type == "ener" and spec.label in (K.ENERGY, K.VIRIAL):
                atom_norm = "per_atom" if (intensive or term.function != "mse") else "sqrt"
            self.fns[name] = LossTermFn(spec, term.function, atom_norm, term.huber_delta, term.relative)

    @property
    def labels(self) -> Tuple[str, ...]:
        """Labels the model must predict (e.g. FORCES tells the trainer to compute derivatives)."""
        return tuple(dict.fromkeys(fn.label for fn in self.fns.values()))

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
        if total is None:
            total = next(iter(pred.values())).new_zeros(())
        return total, weighted, raw


def label_error_sums(pred, batch, labels: Iterable[str]) -> Dict[str, torch.Tensor]:
    """Per-label sums for pooled metrics: ``{name: tensor([Σw r², Σw |r|, Σw])}`` (detached).

    Names are the labels plus ``energy_per_atom`` (and ``virial_per_atom``) with residuals / N.
    RMSE = sqrt(s0 / s2), MAE = s1 / s2.
    """
    out: Dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for label in labels:
            if label not in pred or label not in batch or K.weight_key(label) not in batch:
                continue
            variants = [(label, "none")]
            if label in (K.ENERGY, K.VIRIAL):
                variants.append((f"{label}_per_atom", "per_atom"))
            for name, norm in variants:
                residual, weight = LossTermFn(LossTermSpec(label, norm)).residual_and_weight(pred, batch)
                out[name] = torch.stack([(weight * residual.square()).sum(), (weight * residual.abs()).sum(),
                                         weight.sum()]).double()
    return out


def rmse_mae(sums: torch.Tensor) -> Tuple[float, float]:
    """(RMSE, MAE) from :func:`label_error_sums` entries; nan when no entry carried the label."""
    s0, s1, s2 = (float(v) for v in sums)
    if s2 <= 0:
        return math.nan, math.nan
    return math.sqrt(s0 / s2), s1 / s2
