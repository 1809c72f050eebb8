"""``mlpot compile``: torch.export + AOTInductor (the runner of the files: :mod:`mlpot.calculators.compiled`).

:func:`compile_model` turns a model into one function of plain tensors

    (positions (n, 3) Å, cell (1, 3, 3) Å, pbc (1, 3), atom_types (n,), numbers (n,),
     edge_index (2, E), edge_shifts (E, 3))
        -> (energy (1,) eV, atom_energy (n,) eV, forces (n, 3) eV/Å, virial (1, 3, 3) eV)

with the numbers of atoms and edges dynamic. Forces and virial come from autograd
(``compute_derivatives``); torch.export cannot trace ``torch.autograd.grad``, so the function is
first traced with ``make_fx`` (symbolic sizes), which writes the backward pass out as plain
operators, and that graph is exported. ``backend="aoti"`` compiles it to C++ with AOTInductor (a
``.pt2`` package; minutes of compile time, needs a C++ compiler); ``backend="export"`` saves the
exported program itself (a ``.pt2`` run by torch's interpreter: no compiler, seconds). Both carry
an ``mlpot`` metadata record (type_map, cutoff, dtype, family, source). Tracing needs a model
whose forward reads no data-dependent value back to Python (``mlpot.nn.is_tracing`` marks the
branches that do so for speed); where tracing fails, ``compile_model`` tries TorchScript and,
failing that too, raises a ConfigError that gives both reasons.

"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from mlpot.calculators.compiled import COMPILED_INPUTS, COMPILED_OUTPUTS, FORMAT, load_compiled
from mlpot.calculators.runner import EagerRunner, load_runner
from mlpot.data import keys as K
from mlpot.errors import ConfigError
from mlpot.models.derivatives import compute_derivatives

__all__ = ["compile_model", "example_structure", "check_compiled", "BACKENDS"]

BACKENDS = ("aoti", "export")
# Inductor stores a shared intermediate of more than this many ops instead of recomputing it in each
# consumer (its CPU default is 50): a compressed DeePMD table's interval index (~40 ops) was otherwise
# recomputed for every coefficient row and every vector of the width (water se_e2_a, 1 thread: the
# table kernels 31 -> 17 ms per 192-atom frame)
REALIZE_OPCOUNT = 8


class _TensorFunction(torch.nn.Module):
    """The model as a function of the tensors of :data:`COMPILED_INPUTS` (one frame) -> :data:`COMPILED_OUTPUTS`."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, positions, cell, pbc, atom_types, numbers, edge_index, edge_shifts):
        batch = dict(zip(COMPILED_INPUTS, (positions, cell, pbc, atom_types, numbers, edge_index, edge_shifts)))
        batch[K.BATCH] = torch.zeros_like(atom_types)
        outputs = compute_derivatives(self.model, batch, forces=True, virial=True)
        return tuple(outputs[key] for key in COMPILED_OUTPUTS)


def example_structure(type_map, cutoff: float, n_side: int = 4, seed: int = 0) -> Dict[str, np.ndarray]:
    """A periodic test structure for tracing and checks (one frame, the :data:`COMPILED_INPUTS` arrays):
    n_side^3 atoms on a jittered cubic grid of spacing max(1.6 Å, 0.45 cutoff) — tens of
    neighbours each — with the types in turn, so that every type is present."""
    from mlpot.data.frames import numbers_from_type_map
    from mlpot.data.neighbors import neighbor_list

    rng = np.random.default_rng(seed)
    spacing = max(1.6, 0.45 * cutoff)
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(np.float64)
    positions = (grid + rng.uniform(-0.15, 0.15, grid.shape)) * spacing
    cell = np.eye(3) * spacing * n_side
    types = np.arange(len(positions)) % len(type_map)
    edge_index, shifts = neighbor_list(positions, cell, [True] * 3, cutoff)
    return {K.POSITIONS: positions, K.CELL: cell[None], K.PBC: np.ones((1, 3), bool), K.ATOM_TYPES: types,
            K.NUMBERS: numbers_from_type_map(type_map)[types], K.EDGE_INDEX: edge_index, K.EDGE_SHIFTS: shifts}


def _arguments(structure: Dict[str, Any], device) -> tuple:
    dtypes = {K.POSITIONS: torch.float64, K.CELL: torch.float64, K.PBC: torch.bool, K.EDGE_SHIFTS: torch.float64}
    return tuple(torch.as_tensor(np.asarray(structure[key]), dtype=dtypes.get(key, torch.long)).to(device)
                 for key in COMPILED_INPUTS)


def _trace(function: torch.nn.Module, arguments: tuple):
    """make_fx (symbolic sizes) then torch.export with dynamic atom and edge counts."""
    from torch.export import Dim, export
    from torch.fx.experimental.proxy_tensor import make_fx

    with torch.enable_grad():
        graph = make_fx(function, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*arguments)
    atoms, edges = Dim("n_atoms", min=2, max=2**31 - 2), Dim("n_edges", min=2, max=2**31 - 2)
    shapes = ({0: atoms}, None, None, {0: atoms}, {0: atoms}, {1: edges}, {0: edges})
    return export(graph, arguments, dynamic_shapes=shapes, strict=False)


def _metadata(model, backend: str, source: str, device: torch.device) -> Dict[str, Any]:
    from mlpot import __version__
    from mlpot.models.registry import family_of

    config = getattr(model, "config", {}) or {}
    try:
        family = family_of(config).name if config else type(model).__name__
    except Exception:  # a composite or foreign config: the class name says enough
        family = type(model).__name__
    return {"format": FORMAT, "format_version": 1, "backend": backend, "type_map": list(model.type_map),
            "cutoff": float(model.cutoff), "dtype": str(model.dtype).replace("torch.", ""), "family": family,
            "device": device.type, "source": source, "mlpot_version": __version__, "model_config": config}


def compile_model(model, output: Union[str, Path], backend: str = "aoti", dtype: Optional[str] = None,
                  head: Optional[str] = None, device: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Compile ``model`` (an AtomisticModel or a model file) into ``output``; returns its metadata
    plus ``check``: the largest differences to the eager model on two test structures."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}", key="backend")
    source = str(model) if not isinstance(model, torch.nn.Module) else type(model).__name__
    runner = load_runner(model, device=device, head=head, dtype=dtype)
    if not isinstance(runner, EagerRunner):
        raise ConfigError("already compiled: give a checkpoint or a frozen model", file=source)
    eager = runner.model
    if K.ENERGY not in (getattr(eager, "output_keys", ()) or (K.ENERGY,)):
        raise ConfigError("not supported yet: compiling models without an energy output (dipole, polar, dos)",
                          file=source, key="model")
    per_atom = [key for key in (K.SPIN, K.APARAM) if key in getattr(eager, "input_keys", ())]
    if per_atom:  # no slot for them in the compiled function's inputs
        raise ConfigError(f"not supported yet: compiling models that read per-atom {' and '.join(per_atom)} "
                          "(spin models, aparam); use the frozen model (mlpot freeze)", file=source, key="model")
    example = example_structure(eager.type_map, eager.cutoff)
    arguments = _arguments(example, runner.device)
    function = _TensorFunction(eager).eval()
    output = Path(output)
    metadata = _metadata(eager, backend, source, runner.device)
    try:
        program = _trace(function, arguments)
    except Exception as error:  # the tracer's own errors are many types; keep the reason
        _torchscript_fallback(function, output, metadata, reason=f"{type(error).__name__}: {str(error).splitlines()[0]}")
        return metadata
    _save(program, output, metadata)
    metadata["check"] = check_compiled(output, eager, example)
    return metadata


def _torchscript_fallback(function, output: Path, metadata: Dict[str, Any], reason: str) -> None:
    try:
        scripted = torch.jit.script(function)
    except Exception as error:
        raise ConfigError(f"not supported yet: compiling this {metadata['family']} model. torch.export failed "
                          f"({reason[:300]}); the TorchScript fallback failed too ({type(error).__name__}: "
                          f"{str(error).splitlines()[0][:300]}). Use the frozen model (mlpot freeze) instead.",
                          key="compile") from None
    metadata.update(backend="torchscript", fallback_reason=reason)
    torch.jit.save(scripted, str(output), _extra_files={"mlpot.json": json.dumps(metadata)})


def _save(program, output: Path, metadata: Dict[str, Any]) -> None:
    text = json.dumps(metadata)
    output.parent.mkdir(parents=True, exist_ok=True)
    if metadata["backend"] == "export":
        torch.export.save(program, str(output), extra_files={"mlpot.json": text})
        return
    from torch._inductor import aoti_compile_and_package

    output.unlink(missing_ok=True)
    try:
        aoti_compile_and_package(program, package_path=str(output),
                                 inductor_configs={"aot_inductor.metadata": {"mlpot": text},
                                                   "realize_opcount_threshold": REALIZE_OPCOUNT})
    except Exception as error:  # Inductor's code generator fails in many ways (seen: a vectorisation
        # assertion with 2 OpenMP threads that 1 thread does not hit); the exported program still runs
        output.unlink(missing_ok=True)
        reason = f"AOTInductor failed: {type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:300]}"
        metadata.update(backend="export", fallback_reason=reason)
        torch.export.save(program, str(output), extra_files={"mlpot.json": json.dumps(metadata)})


def check_compiled(path: Path, eager, example: Dict[str, np.ndarray]) -> Dict[str, float]:
    """Largest relative differences (energy; forces and virial relative to their largest entry)
    between the compiled file and the eager model, on ``example`` and on a second, smaller
    structure with other atom and edge counts."""
    runner = load_compiled(path, device=next(iter(eager.parameters())).device.type)
    function = _TensorFunction(eager)
    worst: Dict[str, float] = {}
    for structure in (example, example_structure(eager.type_map, eager.cutoff, n_side=3, seed=1)):
        arguments = _arguments(structure, runner.device)
        reference = [t.detach() for t in function(*arguments)]
        compiled = [t.detach() for t in runner.module(*arguments)]
        for key, ref, got in zip(COMPILED_OUTPUTS, reference, compiled):
            scale = float(ref.abs().max()) or 1.0
            worst[key] = max(worst.get(key, 0.0), float((got.to(ref.dtype) - ref).abs().max()) / scale)
    return worst
