"""``mlpot compile MODEL -o model.pt2``: a compiled model for MD (ASE calculator, ``mlpot md``, LAMMPS).

MODEL is a checkpoint or a frozen model. ``--backend aoti`` (default) traces the model with its
forces and virial (torch.export, dynamic numbers of atoms and edges) and compiles it to C++ with
AOTInductor: a few minutes, needs a C++ compiler (gcc/clang on PATH). ``--backend export`` saves
the exported program without compiling it (seconds; run by torch's interpreter). The result is
checked against the eager model on two test structures and the largest relative differences are
printed. Where torch.export cannot trace a model, a TorchScript fallback is tried and the reason
printed; where that fails too, the command says why and exits with status 2. See
:mod:`mlpot.calculators.compiled`.
"""

from __future__ import annotations

import time
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("model", help="checkpoint or frozen model")
    parser.add_argument("-o", "--output", type=Path, default=Path("model.pt2"), help="compiled model file (.pt2)")
    parser.add_argument("--backend", choices=["aoti", "export"], default="aoti",
                        help="aoti: AOTInductor C++ package (default); export: the exported program, not compiled")
    parser.add_argument("--dtype", choices=["float32", "float64"], default=None, help="precision (default: the model's)")
    parser.add_argument("--device", default="cpu", help="device the compiled model runs on (cpu, cuda)")
    parser.add_argument("--head", default=None, help="task of a multi-task model")


def run(args) -> int:
    from mlpot.calculators.compile import compile_model

    start = time.perf_counter()
    metadata = compile_model(args.model, args.output, backend=args.backend, dtype=args.dtype, head=args.head,
                             device=args.device)
    seconds = time.perf_counter() - start
    print(f"compiled {args.model} ({metadata['family']}, {metadata['dtype']}, type_map {metadata['type_map']}, "
          f"cutoff {metadata['cutoff']} Å) into {args.output} with {metadata['backend']} in {seconds:.0f} s")
    if "fallback_reason" in metadata:
        print(f"{metadata['fallback_reason']}; wrote the {metadata['backend']} backend instead"
              if metadata["backend"] == "export" else
              f"torch.export could not trace this model ({metadata['fallback_reason']}); wrote TorchScript instead")
    if "check" in metadata:
        check = ", ".join(f"{key} {value:.1e}" for key, value in metadata["check"].items())
        print(f"largest relative difference to the eager model on two test structures: {check}")
    return 0
