"""Fixed-point SCF model vs a local model on the FHI-aims water clusters, trained by ``mlpot train``.

Issue #14: the recommended schedule (``direct`` first, then ``unroll_scf`` with 10 steps and mixing
0.3, or ``linearize_solve``) must converge on ``shared/data/water_clusters_aims`` and the trained
model's SCF must converge on every validation frame. For each backbone (``--backbones``: se_e2_a,
nequip, mace; small sizes, ``BACKBONES``) this script writes native configs for

* ``fixed_point``: ``--direct-epochs`` of ``direct``, then ``--scf-epochs`` of ``--scf-mode``
  (``unroll_scf``: ``--scf-steps`` 10, mixing 0.3, from the data's density and Fermi level;
  ``linearize_solve``: converged SCF with implicit derivatives), constant total charge;
* ``local_charges`` (``--local``; or ``backbone``: the plain backbone, energy and forces only):
  the same backbone, loss weights and number of epochs, in one stage;

trains each with ``mlpot train`` (in this process) on a subset of the frames (``--train`` /
``--valid`` frames of a seeded random split of the 150, the rest unused) and evaluates the final
model on the validation frames: energy (meV/atom), force (eV/Å), charge (e) and total dipole (e·Å)
RMSE, and for the fixed-point model the inference SCF (constant charge, from the local density,
``INFERENCE_SCF``): frames converged and the median number of steps.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/fixed_point_water_accuracy.py \\
        [--backbones se_e2_a nequip mace] [--train 60 --valid 30] [--workdir /tmp/fpacc]

``run_comparison`` is what ``tests/test_fixed_point_water_accuracy.py`` calls.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import yaml

SHARED = Path(os.environ.get("MLPOT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CLUSTERS = SHARED / "water_clusters_aims" / "water_clusters.xyz"
N_FRAMES = 150
KEY_MAP = {"AIMS_energy": "energy", "AIMS_forces": "forces", "AIMS_atom_multipoles": "atomic_multipoles",
           "AIMS_dipole": "dipole", "total_charge": "total_charge", "the_fermi_level": "fermi_level",
           "the_external_field": "external_field"}
LOSS = {"energy_per_atom": 10.0, "forces": 100.0, "atomic_multipoles": 100.0}
INFERENCE_SCF = {"num_scf_steps": 200, "mixing_parameter": 0.3, "scf_tolerance": 1e-6}
BACKBONES = {
    "se_e2_a": {"type_map": ["O", "H"],
                "descriptor": {"type": "se_e2_a", "sel": [20, 40], "rcut": 4.0, "rcut_smth": 0.5, "neuron": [8, 16],
                               "axis_neuron": 4, "seed": 1},
                "fitting_net": {"neuron": [16, 16], "seed": 1}},
    "nequip": {"type": "nequip", "type_names": ["O", "H"], "r_max": 4.0, "num_layers": 2,
               "l_max": 1, "num_features": 8, "radial_mlp_depth": 1, "radial_mlp_width": 16, "num_bessels": 8,
               "avg_num_neighbors": 8.0, "seed": 1,
               # least-squares per-element energies of the 150 frames (MACE's E0s: average), rounded
               "per_type_energy_shifts": {"O": -2056.8, "H": -11.5}, "per_type_energy_shifts_trainable": True},
    "mace": {"type": "mace", "model": "MACE", "hidden_irreps": "8x0e+8x1o", "r_max": 4.0, "max_ell": 1, "correlation": 2,
             "num_interactions": 2, "radial_MLP": [16], "num_radial_basis": 6, "MLP_irreps": "8x0e",
             "atomic_numbers": [1, 8], "E0s": "average", "avg_num_neighbors": "auto"},
}


def split_sizes(n_train: int, n_valid: int) -> dict:
    sizes = {"train": n_train, "valid": n_valid}
    if n_train + n_valid < N_FRAMES:
        sizes["unused"] = N_FRAMES - n_train - n_valid
    return sizes


def data_section(part: str, args) -> dict:
    """``data.train`` / ``data.valid``: one part of the seeded split of ``args.data``."""
    sizes, batch_size = split_sizes(args.train, args.valid), args.batch_size
    return {"paths": [str(args.data)], "format": "extxyz", "key_map": dict(KEY_MAP), "batch_size": batch_size,
            "sampler": "epoch", "shuffle": part == "train", "split": {"sizes": sizes, "part": part, "seed": 1}}


def model_section(kind: str, backbone: str) -> dict:
    """The ``model`` section: ``fixed_point``, ``local_charges`` or the plain ``backbone``."""
    section = dict(BACKBONES[backbone])
    if kind == "backbone":
        return section
    model = {"type": kind, "backbone": section, "electrostatic_pbc_method": "realspace", "hidden_channels": 8,
             "atomic_multipoles_max_l": 1, "atom_density_scaling": "average", "scf_convergence_summary": False}
    if kind == "fixed_point":
        model.update(field_feature_norms="average", scf=dict(INFERENCE_SCF))
    return model


def scf_options(mode: str, steps: int) -> dict:
    if mode == "unroll_scf":
        scf = {"num_scf_steps": steps, "mixing_parameter": 0.3, "initial_density": "from_data",
               "initial_fermi_level": "from_data"}
    else:
        scf = {"num_scf_steps": 100, "mixing_parameter": 0.3}
    return {"fixed_point_training_options": {"mode": mode, "scf": scf}}


def config(kind: str, backbone: str, args, output_dir: Path) -> dict:
    """Native config of one training (module docstring)."""
    loss = dict(LOSS) if kind != "backbone" else {k: v for k, v in LOSS.items() if k != "atomic_multipoles"}
    weights = {name: {"weight": w} for name, w in loss.items()}
    epochs = args.direct_epochs + args.scf_epochs
    if kind == "fixed_point":
        schedule = [{"name": "direct", "start": 0, "end": args.direct_epochs - 1, "lr": args.lr, "loss": weights,
                     "model_options": {"fixed_point_training_options": {"mode": "direct"}}},
                    {"name": "scf", "start": args.direct_epochs, "end": epochs - 1, "lr": args.scf_lr, "loss": weights,
                     "model_options": scf_options(args.scf_mode, args.scf_steps)}]
    else:
        schedule = [{"name": "train", "start": 0, "end": args.direct_epochs - 1, "lr": args.lr, "loss": weights},
                    {"name": "late", "start": args.direct_epochs, "end": epochs - 1, "lr": args.scf_lr, "loss": weights}]
    return {"seed": 1, "dtype": "float64", "output_dir": str(output_dir), "model": model_section(kind, backbone),
            "data": {"train": data_section("train", args), "valid": data_section("valid", args)},
            "optimizer": {"name": "adam", "lr": args.lr}, "lr_schedule": {"type": "constant"},
            "training": {"numb_epochs": epochs, "clip_grad_norm": 10.0}, "train_schedule": schedule}


def _rmse(errors: List[np.ndarray]) -> float:
    flat = np.concatenate([np.ravel(e) for e in errors]) if errors else np.zeros(0)
    return float(np.sqrt(np.mean(flat ** 2))) if flat.size else float("nan")


def evaluate(model_file: Path, args) -> Dict[str, float]:
    """RMSEs and SCF statistics of the trained model on the validation frames."""
    from mlpot.calculators import load_model
    from mlpot.calculators.evaluate import iterate_predictions
    from mlpot.data import keys as K
    from mlpot.data import FrameList, read_frames
    from mlpot.data.splits import split_indices

    model = load_model(model_file)
    if hasattr(model, "allow_unconverged"):
        model.allow_unconverged = True  # count the unconverged frames instead of raising
    frames = read_frames(args.data, key_map=KEY_MAP, type_map=model.type_map)
    indices = split_indices(len(frames), split_sizes(args.train, args.valid), seed=1)["valid"]
    valid = FrameList([frames[i] for i in indices], frames.type_map)
    err = {"energy": [], "forces": [], "charges": [], "dipole": []}
    converged, steps = [], []
    for frame, pred in iterate_predictions(model, valid, batch_size=args.batch_size):
        n = len(frame[K.POSITIONS])
        err["energy"].append((pred[K.ENERGY] - frame[K.ENERGY]) / n * 1000.0)
        err["forces"].append(pred[K.FORCES] - frame[K.FORCES])
        if K.CHARGES in pred:
            err["charges"].append(pred[K.CHARGES] - frame[K.ATOMIC_MULTIPOLES][:, 0])
            err["dipole"].append(pred[K.DIPOLE] - frame[K.DIPOLE])
        if K.SCF_CONVERGED in pred:
            converged.append(bool(pred[K.SCF_CONVERGED] > 0.5))
            steps.append(int(pred[K.SCF_STEPS]))
    out = {f"{key}_rmse": _rmse(values) for key, values in err.items()}
    out["frames"] = len(valid)
    if converged:
        out["scf_converged"] = float(np.mean(converged))
        out["scf_median_steps"] = float(np.median(steps))
    return out


def train_one(kind: str, backbone: str, args, workdir: Path) -> Dict[str, float]:
    from mlpot.cli import main

    folder = workdir / f"{backbone}_{kind}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config(kind, backbone, args, folder), sort_keys=False))
    start = time.perf_counter()
    code = main(["train", str(path), "--no-progress"])
    if code != 0:
        raise RuntimeError(f"mlpot train {path} exited with {code}")
    seconds = time.perf_counter() - start
    result = evaluate(folder / "model.pt", args)
    result["train_s"] = seconds
    return result


def run_comparison(args, workdir: Path) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{backbone: {kind: metrics}} for ``fixed_point`` and ``args.local`` on every ``args.backbones``."""
    return {backbone: {kind: train_one(kind, backbone, args, workdir) for kind in ("fixed_point", args.local)}
            for backbone in args.backbones}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=CLUSTERS, help="water_clusters.xyz")
    p.add_argument("--backbones", nargs="+", default=["se_e2_a"], choices=list(BACKBONES))
    p.add_argument("--local", default="local_charges", choices=["local_charges", "backbone"])
    p.add_argument("--train", type=int, default=60, help="training frames (seeded random split)")
    p.add_argument("--valid", type=int, default=30, help="validation frames")
    p.add_argument("--batch-size", type=int, default=6)
    p.add_argument("--direct-epochs", type=int, default=100)
    p.add_argument("--scf-epochs", type=int, default=20)
    p.add_argument("--scf-mode", default="unroll_scf", choices=["unroll_scf", "linearize_solve"])
    p.add_argument("--scf-steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--scf-lr", type=float, default=0.001)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/fixed_point_water_accuracy"))
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    print(f"threads={os.environ.get('OMP_NUM_THREADS', '?')} load={os.getloadavg()[0]:.2f} train={args.train} "
          f"valid={args.valid} epochs={args.direct_epochs} direct + {args.scf_epochs} {args.scf_mode}"
          f"{f' ({args.scf_steps} steps)' if args.scf_mode == 'unroll_scf' else ''}", flush=True)
    results = run_comparison(args, args.workdir)
    print(f"{'backbone':<9} {'model':<13} {'E meV/at':>9} {'F eV/Å':>8} {'q e':>8} {'dipole eÅ':>9} "
          f"{'SCF conv':>9} {'med steps':>9} {'train s':>8}")
    for backbone, rows in results.items():
        for kind, r in rows.items():
            scf = f"{100 * r['scf_converged']:>8.1f}% {r['scf_median_steps']:>9.0f}" if "scf_converged" in r else f"{'-':>9} {'-':>9}"
            print(f"{backbone:<9} {kind:<13} {r['energy_rmse']:>9.2f} {r['forces_rmse']:>8.4f} {r['charges_rmse']:>8.4f} "
                  f"{r['dipole_rmse']:>9.4f} {scf} {r['train_s']:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
