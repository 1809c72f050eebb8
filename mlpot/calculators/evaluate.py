"""Run a model over frames for evaluation (``mlpot test``, model deviation, the ASE calculator).

:func:`predict_batch` predicts one collated batch in inference mode: parameters do not record
gradients, forces/virial/stress of energy models come from one first-order autograd pass of the
generic wrapper (``mlpot.models.derivatives``; no ``create_graph``, so no graph of second
derivatives is ever built), models without an energy (dipole, polarizability, DOS) run under
``torch.no_grad``, and per-atom work that supports it runs in chunks of ``atom_chunk`` atoms with
recomputation (``mlpot.nn.atom_chunks``: se_atten keeps one chunk's attention graph at a time
instead of the frame's; a 192-atom water frame of the se_atten_v2 example peaks at 0.6 GB of
process memory instead of 1.7 GB).
:func:`iterate_predictions` yields frame by frame, and :func:`evaluate_frames` streams the
predictions into the error sums and detail files of :mod:`mlpot.calculators.scoring`: the memory of
a run is one batch's, whatever the number of frames.

Units: energy eV, forces eV/Å, virial eV (DeePMD sign: Ξ = -Σ r ⊗ ∂E/∂r), stress eV/Å^3
(= -Ξ / V, ASE sign); tensors and DOS in the unit of their labels.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional, Sequence

import numpy as np

from mlpot.calculators.scoring import (  # re-exported: the report half of evaluation
    DetailWriter, SystemResult, format_report, scorers_for, system_errors, weighted_average,
)

__all__ = [
    "SystemResult",
    "DetailWriter",
    "system_errors",
    "weighted_average",
    "format_report",
    "DEFAULT_ATOM_CHUNK",
    "output_keys",
    "selected_types",
    "inference",
    "predict_batch",
    "wants_hessian",
    "iterate_predictions",
    "evaluate_frames",
]

# atoms per recomputed chunk in inference: 32 keeps a float64 se_atten (sel 120, attn 128) water
# frame at 0.3 GB of graph (whole frames: 1.2 GB), for one more forward pass of the descriptor
DEFAULT_ATOM_CHUNK = 32


def output_keys(model) -> tuple:
    """Batch keys the model predicts (``AtomisticModel.output_keys``); () for models that do not say,
    which are energy models."""
    return tuple(getattr(model, "output_keys", ()) or ())


def predicts_energy(model) -> bool:
    """True for models whose forces/virial come from an energy (output ENERGY, or no output_keys)."""
    from mlpot.data.keys import ENERGY

    keys = output_keys(model)
    return not keys or ENERGY in keys


def selected_types(model) -> np.ndarray:
    """(n_types,) bool: types with atomic outputs. DeePMD tensor models zero the others through
    ``atom_exclude_types`` (the model's ``atom_keep``) or the fitting's ``sel_type`` (``selected``)."""
    keep = np.ones(len(model.type_map), dtype=bool)
    for owner, name in ((model, "atom_keep"), (getattr(model, "fitting", None), "selected")):
        mask = getattr(owner, name, None)
        if mask is not None:
            keep &= np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask, dtype=bool)
    return keep


@contextlib.contextmanager
def inference(model, atom_chunk: Optional[int] = DEFAULT_ATOM_CHUNK) -> Iterator[None]:
    """Model in eval mode with parameters not requiring grad, per-atom work chunked by ``atom_chunk``
    atoms (None or 0: not chunked); flags and mode are restored on exit."""
    from mlpot.nn import atom_chunks

    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        model.eval()
        with atom_chunks(atom_chunk):
            yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        model.train(training)


def predict_batch(model, batch: Dict[str, "torch.Tensor"], virial: bool = True,
                  atom_chunk: Optional[int] = DEFAULT_ATOM_CHUNK, hessian: bool = False) -> Dict[str, "torch.Tensor"]:
    """The model's outputs on a collated batch (with edges), detached and on the CPU; for energy
    models also forces (n_atoms, 3) eV/Å and, when ``virial``, virial (n_frames, 3, 3) eV and stress
    (n_frames, 3, 3) eV/Å^3; with ``hessian`` the Hessians (n_frames, (3 N_max)²) eV/Å² (zero-padded
    rows, ``mlpot.models.hessian``; a second derivative, so the forces' pass keeps its graph and
    atoms are not chunked). The batch is moved to the model's device first. See the module docstring."""
    import torch

    from mlpot.models.derivatives import compute_derivatives

    device = next(iter(model.parameters()), torch.empty(0)).device
    batch = {key: value.to(device) for key, value in batch.items()}
    hessian = hessian and predicts_energy(model)
    with inference(model, None if hessian else atom_chunk):
        if predicts_energy(model):
            with torch.enable_grad():
                outputs = compute_derivatives(model, batch, forces=True, virial=virial, stress=virial, hessian=hessian)
        else:
            with torch.no_grad():
                outputs = dict(model(batch))
    return {key: value.detach().cpu() for key, value in outputs.items() if torch.is_tensor(value)}


def wants_hessian(model, hessian: Optional[bool] = None) -> bool:
    """Whether evaluation computes Hessians: ``hessian`` when given (``mlpot test --hessian``), else
    the model's training record (``hessian_mode``: trained with a Hessian loss term, as DeePMD-kit's
    dp test decides); never for models without an energy."""
    return bool(getattr(model, "hessian_mode", False) if hessian is None else hessian) and predicts_energy(model)


def iterate_predictions(model, frames: Sequence[dict], batch_size: int = 8,
                        atom_chunk: Optional[int] = DEFAULT_ATOM_CHUNK, min_distance: Optional[float] = None,
                        hessian: Optional[bool] = None):
    """Yield (frame, prediction) for each frame; prediction maps the model's batch keys to numpy
    arrays of that frame: frame-level outputs (``energy`` (), ``dipole`` (3,), ``dos`` (n_dos,), ...)
    and atom-level ones (``forces`` (n_atoms, 3), ``atomic_dipole`` (n_atoms, 3), ...), ``hessian``
    ((3 N_max)², the frame's (3N)² first; 3N backward passes per frame) when :func:`wants_hessian`
    and for batches whose frames carry hessian labels; ``virial`` (3, 3) eV and ``stress`` (3, 3)
    eV/Å^3 only for batches of periodic frames. Atoms closer than ``min_distance`` Å (default
    ``MIN_SANE_DISTANCE``) are a DataError."""
    import torch

    from mlpot.data import MIN_SANE_DISTANCE, AtomsDataset, collate
    from mlpot.data.keys import HESSIAN, KEYS, PBC, PTR, STRESS, VIRIAL, weight_key

    hessian = wants_hessian(model, hessian)
    dataset = AtomsDataset(frames, cutoff=model.cutoff, type_map=getattr(frames, "type_map", model.type_map),
                           min_distance=MIN_SANE_DISTANCE if min_distance is None else min_distance)
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = collate(items, dtype=torch.float64)
        periodic = bool(batch[PBC].all())
        labelled = HESSIAN in batch and bool(batch[weight_key(HESSIAN)].any())  # frames with hessian.npy
        out = predict_batch(model, batch, virial=periodic, atom_chunk=atom_chunk, hessian=hessian and labelled)
        ptr = batch[PTR].numpy()
        levels = {key: KEYS[key].level for key in out if key in KEYS and KEYS[key].level in ("atom", "frame")}
        if not periodic:
            levels = {key: level for key, level in levels.items() if key not in (VIRIAL, STRESS)}
        for n, item in enumerate(items):
            yield item, {key: (out[key][ptr[n]:ptr[n + 1]] if level == "atom" else out[key][n]).numpy()
                         for key, level in levels.items()}


def evaluate_frames(model, frames: Sequence[dict], name: str, batch_size: int = 8, *, atomic: bool = False,
                    details: Optional[DetailWriter] = None, group: int = 0,
                    atom_chunk: Optional[int] = DEFAULT_ATOM_CHUNK, min_distance: Optional[float] = None,
                    hessian: Optional[bool] = None) -> SystemResult:
    """Score ``model`` on ``frames`` (read with the model's type_map) into a :class:`SystemResult`
    (running error sums; see :mod:`mlpot.calculators.scoring`): the labels the frames carry that
    the model predicts. atomic: test atomic labels (dp test ``-a``); details: write detail rows
    there, as system number ``group`` of the run; ``min_distance``, ``hessian`` (None: the model's
    hessian_mode): see :func:`iterate_predictions`."""
    scorers = scorers_for(output_keys(model), selected_types(model), atomic)
    result = SystemResult(name, len(frames))
    predictions = iterate_predictions(model, frames, batch_size, atom_chunk, min_distance, hessian)
    for index, (frame, prediction) in enumerate(predictions):
        for scorer in scorers:
            scorer.score(frame, prediction, result, details, index, group)
    for scorer in scorers:
        scorer.finish(result)
        result.footer.extend(line for line in scorer.footer if line not in result.footer)
    return result
