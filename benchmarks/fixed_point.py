"""Cost of the fixed-point (self-consistent) electrostatic model: training epochs, SCF steps, memory.

Default mode, on a fixed subset of the FHI-aims water clusters (``--frames`` frames, batches of
``--batch-size``, small se_e2_a backbone, float64, constant total charge):

1. one training epoch per training mode (direct, unroll_scf, implicit, linearize_solve): forward
   with forces, an energy/force/multipole MSE loss, backward (second derivatives through the
   forces) and an Adam step over every batch; the best of ``--repeats`` epochs after one warm-up
   epoch, with the SCF counts of that epoch;
2. the cost of a K-step SCF forward + forces (``unroll_scf`` with K map evaluations, tolerance 0 so
   that every step runs, constant Fermi level and constant charge) relative to the local backbone
   alone (its energy + forces), for K = 1, 3, 5, 10, 20, next to issue #14's target 1 + 0.25 K, with
   the small backbone and with the DeePMD-kit water example's (``--ratio-backbones``).

``--memory``: peak memory of one training step (forward, forces, loss, backward) in
``linearize_solve`` and ``implicit`` against atoms per batch: batches of 1, 2, 4, 8 frames of
~240 atoms (water clusters placed 15 Å apart in one isolated frame: the dense Coulomb path) and of
1, 2, 4, 8, 10 periodic 192-atom water boxes (deepmd_water: the Ewald / PME path). Each
measurement runs in a fresh subprocess; the figure is the resident-set growth (ru_maxrss minus
the RSS after setup), so it counts everything the step allocates (torch CPU tensors included).
Issue #14's limit: 2 GB for 4 frames of ~240 atoms.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/fixed_point.py [--frames 32] [--steps 1 3 5 10 20] [--cpu-time] [--skip-epochs]
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/fixed_point.py --memory [--memory-frames 1 2 4 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(os.environ.get("MLPOT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CLUSTERS = SHARED / "water_clusters_aims" / "water_clusters.xyz"
WATER_BOX = SHARED / "deepmd_water" / "data_0"
CUTOFF = 4.0
MODES = ("direct", "unroll_scf", "implicit", "linearize_solve")
LOSS_WEIGHTS = {"energy_per_atom": 10.0, "forces": 100.0, "atomic_multipoles": 100.0}
MEMORY_LIMIT_MB = 2048.0


# se_e2_a sizes (embedding neurons, axis neurons, fitting neurons): "small" for the epochs, and the
# DeePMD-kit water example's ("deepmd_water") as a production-size backbone for the SCF cost ratio
BACKBONES = {"small": ((8, 16), 4, (16, 16)), "deepmd_water": ((25, 50, 100), 16, (240, 240, 240))}


def backbone_section(size: str = "small") -> dict:
    """An se_e2_a backbone for O/H (rcut 4 Å) of one of the ``BACKBONES`` sizes."""
    neuron, axis, fitting = BACKBONES[size]
    return {"type_map": ["O", "H"],
            "descriptor": {"type": "se_e2_a", "sel": [40, 80], "rcut": CUTOFF, "rcut_smth": 0.5,
                           "neuron": list(neuron), "axis_neuron": axis, "seed": 1},
            "fitting_net": {"neuron": list(fitting), "seed": 1}}


def model_section(size: str = "small", **overrides) -> dict:
    section = {"type": "fixed_point", "backbone": backbone_section(size), "hidden_channels": 8,
               "field_feature_norms": "average", "atom_density_scaling": "average"}
    section.update(overrides)
    return section


def training_options(mode: str, steps: int = 100, mixing: float = 0.3, constant_charge: bool = True,
                     tolerance: float = 1e-6) -> dict:
    if mode == "direct":
        return {"mode": "direct"}
    return {"mode": mode, "scf": {"num_scf_steps": steps, "mixing_parameter": mixing, "constant_charge": constant_charge,
                                  "scf_tolerance": tolerance, "initial_density": "from_data",
                                  "initial_fermi_level": "from_data"}}


def collated(frames, batch_size: int):
    from mlpot.data import AtomsDataset, collate

    dataset = AtomsDataset(frames, cutoff=CUTOFF)
    return [collate([dataset[i] for i in range(lo, min(lo + batch_size, len(frames)))])
            for lo in range(0, len(frames), batch_size)]


def build(section: dict, batches):
    import torch

    from mlpot.models.registry import build_model

    torch.manual_seed(0)
    model = build_model(section)
    model.compute_statistics(batches)
    return model


def loss_of(out, batch):
    """Weighted MSE of energy per atom, forces and atomic multipoles (the model's (L+1)^2 columns)."""
    from mlpot.data import keys as K

    n_atoms = batch[K.N_ATOMS].to(out[K.ENERGY].dtype)
    loss = LOSS_WEIGHTS["energy_per_atom"] * ((out[K.ENERGY] - batch[K.ENERGY]) / n_atoms).pow(2).mean()
    loss = loss + LOSS_WEIGHTS["forces"] * (out[K.FORCES] - batch[K.FORCES]).pow(2).mean()
    if K.ATOMIC_MULTIPOLES in batch:
        predicted = out[K.ATOMIC_MULTIPOLES]
        loss = loss + LOSS_WEIGHTS["atomic_multipoles"] * (
            predicted - batch[K.ATOMIC_MULTIPOLES][:, : predicted.shape[1]]).pow(2).mean()
    return loss


def train_step(model, optimizer, batch) -> None:
    from mlpot.models.derivatives import compute_derivatives

    out = compute_derivatives(model, batch, forces=True, create_graph=True)
    optimizer.zero_grad(set_to_none=True)
    loss_of(out, batch).backward()
    optimizer.step()


def epoch_times(batches, repeats: int):
    """(mode, best epoch seconds, SCF report of the last epoch) per training mode."""
    import torch

    rows = []
    for mode in MODES:
        model = build(model_section(), batches)
        model.set_options(training_options(mode, steps=10 if mode == "unroll_scf" else 100))
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        best, report = float("inf"), None
        for repeat in range(repeats + 1):  # the first epoch warms up
            model.epoch_report()
            start = time.perf_counter()
            for batch in batches:
                train_step(model, optimizer, batch)
            if repeat:
                best = min(best, time.perf_counter() - start)
            report = model.epoch_report()
        rows.append((mode, best, report or "-"))
    return rows


CLOCK = {"clock": time.perf_counter}  # --cpu-time: time.process_time (steadier on a shared machine)


def _best(fn, repeats: int) -> float:
    clock = CLOCK["clock"]
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def scf_ratios(batches, steps, repeats: int, size: str):
    """Seconds of the backbone's energy + forces, and (K, constant Fermi s, constant charge s) rows."""
    from mlpot.models.derivatives import compute_derivatives

    model = build(model_section(size), batches)
    model.eval()
    backbone = model.backbone.model

    def local():
        for batch in batches:
            compute_derivatives(backbone, batch, forces=True)

    base = _best(local, repeats)
    rows = []
    for k in steps:
        seconds = []
        for constant_charge in (False, True):
            # K map evaluations = num_scf_steps K + 1 (the initial density is step 0); tolerance 0: no early stop
            model.set_options(training_options("unroll_scf", steps=k + 1, constant_charge=constant_charge, tolerance=1e-300))

            def scf():
                for batch in batches:
                    compute_derivatives(model, batch, forces=True)

            seconds.append(_best(scf, repeats))
        rows.append((k, *seconds))
    return base, rows


def run_speed(args) -> None:
    from mlpot.data import read_frames

    frames = read_frames(CLUSTERS, index=f"0:{args.frames}")
    batches = collated(frames, args.batch_size)
    atoms = sum(len(f["positions"]) for f in frames)
    print(f"threads={os.environ.get('OMP_NUM_THREADS', '?')} load={os.getloadavg()[0]:.2f} "
          f"frames={len(frames)} atoms={atoms} batches={len(batches)} (batch size {args.batch_size})")
    if not args.skip_epochs:
        print("training epoch (forces, 2nd derivatives, Adam), constant charge, from_data start, mixing 0.3, "
              "unroll_scf 10 steps, implicit/linearize_solve up to 100 steps tol 1e-6")
        print(f"{'mode':<16} {'epoch (s)':>10} {'vs direct':>10}  SCF")
        rows = epoch_times(batches, args.repeats)
        direct = rows[0][1]
        for mode, seconds, report in rows:
            print(f"{mode:<16} {seconds:>10.3f} {seconds / direct:>10.2f}  {report}", flush=True)
    for size in args.ratio_backbones:
        base, ratios = scf_ratios(batches, args.steps, args.repeats, size)
        print(f"K-step SCF (unroll_scf, K map evaluations) energy + forces / local backbone energy + forces "
              f"({'CPU' if args.cpu_time else 'wall'} time); "
              f"backbone {size} {BACKBONES[size]}: {base:.4f} s over all batches")
        print(f"{'K':>4} {'fermi (s)':>10} {'ratio':>7} {'charge (s)':>10} {'ratio':>7} {'target':>7}")
        for k, fermi, charge in ratios:
            print(f"{k:>4d} {fermi:>10.4f} {fermi / base:>7.2f} {charge:>10.4f} {charge / base:>7.2f} "
                  f"{1 + 0.25 * k:>7.2f}", flush=True)


# ---- memory ---------------------------------------------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def large_clusters(n_frames: int, target_atoms: int = 240):
    """``n_frames`` isolated frames of ~``target_atoms`` atoms: water clusters on a 15 Å grid."""
    import numpy as np

    from mlpot.data import FrameList, read_frames
    from mlpot.data import keys as K

    clusters = read_frames(CLUSTERS)
    frames, at = [], 0
    for _ in range(n_frames):
        parts, count = [], 0
        while count < target_atoms:
            parts.append(clusters[at % len(clusters)])
            count += len(parts[-1][K.POSITIONS])
            at += 1
        offsets = [15.0 * np.array([k % 4, (k // 4) % 4, k // 16], dtype=float) for k in range(len(parts))]
        frame = {key: np.concatenate([p[key] for p in parts]) for key in
                 (K.ATOM_TYPES, K.NUMBERS, K.FORCES, K.ATOMIC_MULTIPOLES)}
        frame[K.POSITIONS] = np.concatenate([p[K.POSITIONS] - p[K.POSITIONS].mean(0) + o for p, o in zip(parts, offsets)])
        frame[K.CELL], frame[K.PBC] = np.zeros((3, 3)), np.zeros(3, dtype=bool)
        for key in (K.ENERGY, K.TOTAL_CHARGE):
            frame[key] = np.array(sum(float(p[key]) for p in parts))
        frame[K.FERMI_LEVEL] = np.array(float(parts[0][K.FERMI_LEVEL]))
        for key in (K.ENERGY, K.FORCES, K.ATOMIC_MULTIPOLES, K.FERMI_LEVEL):
            frame[K.weight_key(key)] = np.array(1.0)
        frames.append(frame)
    return FrameList(frames, clusters.type_map)


def water_boxes(n_frames: int):
    from mlpot.data import read_frames

    return read_frames(WATER_BOX, index=f"0:{n_frames}", type_map=["O", "H"])


def memory_single(kind: str, n_frames: int, mode: str) -> dict:
    import torch

    from mlpot.data import keys as K

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    frames = large_clusters(n_frames) if kind == "clusters" else water_boxes(n_frames)
    batches = collated(frames, n_frames)
    # the boxes have no multipoles or Fermi levels: no data-derived feature norms or density scaling
    section = model_section() if kind == "clusters" else \
        model_section(fermi_level_offset=0.0, field_feature_norms=None, atom_density_scaling=None)
    model = build(section, batches)
    model.set_options(training_options(mode, steps=100))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    base = _rss_mb()
    start = time.perf_counter()
    train_step(model, optimizer, batches[0])
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    report = model.epoch_report() or "-"
    return {"atoms": int(batches[0][K.N_ATOMS].sum()), "peak_mb": max(peak, 0.0), "seconds": seconds, "scf": report}


def _measure(kind: str, n_frames: int, mode: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--single", kind, str(n_frames), mode],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _slope(xs, ys) -> float:
    """Least-squares exponent of y ~ x^a (log-log)."""
    import math

    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-3)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def run_memory(args) -> None:
    print(f"threads={os.environ.get('OMP_NUM_THREADS', '?')} load={os.getloadavg()[0]:.2f}; peak = RSS growth "
          "(ru_maxrss - RSS after setup) of one training step (forces, loss, backward, Adam), fresh process each")
    for kind, counts in (("clusters", args.memory_frames), ("boxes", args.box_frames)):
        for mode in ("linearize_solve", "implicit"):
            print(f"{kind} ({'~240-atom isolated frames' if kind == 'clusters' else '192-atom periodic boxes'}), {mode}")
            print(f"{'frames':>7} {'atoms':>6} {'peak (MB)':>10} {'MB/atom':>8} {'step (s)':>9}  SCF")
            rows = []
            for n in counts:
                r = _measure(kind, n, mode)
                rows.append(r)
                flag = ""
                if kind == "clusters" and n == 4:
                    flag = f"  (limit {MEMORY_LIMIT_MB:.0f} MB: {'met' if r['peak_mb'] < MEMORY_LIMIT_MB else 'MISSED'})"
                print(f"{n:>7} {r['atoms']:>6} {r['peak_mb']:>10.1f} {r['peak_mb'] / r['atoms']:>8.3f} "
                      f"{r['seconds']:>9.2f}  {r['scf']}{flag}", flush=True)
            if len(rows) >= 2:
                print(f"memory exponent vs atoms per batch: {_slope([r['atoms'] for r in rows], [r['peak_mb'] for r in rows]):.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32, help="water clusters (the first N frames)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 3, 5, 10, 20], help="K: SCF map evaluations")
    parser.add_argument("--skip-epochs", action="store_true", help="only the SCF cost ratios, no training epochs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ratio-backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES),
                        help="backbone sizes of the SCF cost ratio")
    parser.add_argument("--cpu-time", action="store_true", help="SCF cost ratios in CPU time (process_time), not wall time")
    parser.add_argument("--memory", action="store_true", help="peak memory against atoms per batch instead")
    parser.add_argument("--memory-frames", type=int, nargs="+", default=[1, 2, 4, 8], help="~240-atom frames per batch")
    parser.add_argument("--box-frames", type=int, nargs="+", default=[1, 2, 4, 8, 10], help="192-atom boxes per batch")
    parser.add_argument("--single", nargs=3, metavar=("KIND", "N", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_time:
        CLOCK["clock"] = time.process_time
    if args.single:
        print(json.dumps(memory_single(args.single[0], int(args.single[1]), args.single[2])))
    elif args.memory:
        run_memory(args)
    else:
        run_speed(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
