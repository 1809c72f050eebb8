"""MACE on liquid water: mlpot vs mace-torch 0.3.16, training step and inference per 192-atom frame.

Hyperparameters: ScaleShiftMACE, hidden_irreps 64x0e + 64x1o, correlation 3, 2 interactions
(RealAgnosticInteractionBlock, then RealAgnosticResidualInteractionBlock, as ``mace_run_train
--model MACE``), r_max 5 Å, max_ell 3, 8 Bessel functions, cutoff p 5, radial MLP [64, 64, 64],
MLP_irreps 16x0e; frame 0 of ``shared/data/deepmd_water/data_0`` (64 O + 128 H), its neighbour list
built once by mlpot and given to both codes.

* inference: energy and forces (autograd), no graph kept;
* training step: energy + forces loss, forces with ``create_graph``, ``loss.backward(inputs=params)``.

mace-torch runs in a subprocess of the peer virtual environment (``--peer-python``, default
/work/peers/mace/bin/python; ``pip install torch==2.13.0`` then ``mace-torch==0.3.16`` there). It
builds its model with seed 0 and hands its state dict over, so mlpot evaluates the very same model:
the script prints the largest energy and force differences before the timings. Times are CPU time
of the process (``time.process_time``) and wall time, median of ``--repeats`` runs after a warm-up,
with ``--threads`` intra-op threads for both codes.

    OMP_NUM_THREADS=2 python benchmarks/mace_water.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "deepmd_water" / "data_0"
HYPER = dict(r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=3, num_interactions=2, hidden_irreps="64x0e+64x1o",
             MLP_irreps="16x0e", correlation=3, radial_MLP=[64, 64, 64], avg_num_neighbors=50.0,
             interaction_cls="RealAgnosticResidualInteractionBlock", interaction_cls_first="RealAgnosticInteractionBlock",
             atomic_numbers=[1, 8], atomic_energies=[-13.6, -2041.8], atomic_inter_scale=1.0, atomic_inter_shift=0.0)

PEER_SCRIPT = textwrap.dedent('''
    import json, statistics, sys, time
    import numpy as np, torch
    args = json.loads(sys.argv[1])
    torch.set_num_threads(args["threads"])
    dtype = getattr(torch, args["dtype"])
    torch.set_default_dtype(dtype)
    from e3nn import o3
    from mace import modules
    h = args["hyper"]
    torch.manual_seed(0)
    model = modules.ScaleShiftMACE(
        r_max=h["r_max"], num_bessel=h["num_bessel"], num_polynomial_cutoff=h["num_polynomial_cutoff"], max_ell=h["max_ell"],
        interaction_cls=modules.interaction_classes[h["interaction_cls"]],
        interaction_cls_first=modules.interaction_classes[h["interaction_cls_first"]],
        num_interactions=h["num_interactions"], num_elements=len(h["atomic_numbers"]), hidden_irreps=o3.Irreps(h["hidden_irreps"]),
        MLP_irreps=o3.Irreps(h["MLP_irreps"]), atomic_energies=np.array(h["atomic_energies"]),
        avg_num_neighbors=h["avg_num_neighbors"], atomic_numbers=h["atomic_numbers"], correlation=h["correlation"],
        gate=torch.nn.functional.silu, radial_MLP=h["radial_MLP"], atomic_inter_scale=h["atomic_inter_scale"],
        atomic_inter_shift=h["atomic_inter_shift"], use_reduced_cg=False)
    d = np.load(args["frame"])
    positions = torch.tensor(d["positions"], dtype=dtype)
    cell = torch.tensor(d["cell"], dtype=dtype)
    index = torch.tensor(d["edge_index"])
    shifts = torch.tensor(d["edge_shifts"], dtype=dtype)
    element = torch.tensor(d["element"])
    data = dict(edge_index=torch.stack([index[1], index[0]]), shifts=-(shifts @ cell), unit_shifts=-shifts, cell=cell,
                node_attrs=torch.nn.functional.one_hot(element, len(h["atomic_numbers"])).to(dtype),
                batch=torch.zeros(len(positions), dtype=torch.long), ptr=torch.tensor([0, len(positions)]))
    params = [p for p in model.parameters() if p.requires_grad]
    def infer():
        return model(dict(data, positions=positions.clone()), training=False, compute_force=True)
    def train():
        out = model(dict(data, positions=positions.clone()), training=True, compute_force=True)
        loss = out["energy"].square().sum() + out["forces"].square().sum()
        loss.backward(inputs=params)
    times = {}
    for name, step in (("inference", infer), ("training", train)):
        step()
        cpu, wall = [], []
        for _ in range(args["repeats"]):
            c, w = time.process_time(), time.perf_counter()
            step()
            cpu.append(time.process_time() - c); wall.append(time.perf_counter() - w)
        times[name] = {"cpu": statistics.median(cpu), "wall": statistics.median(wall)}
    out = infer()
    torch.save({"state": model.state_dict(), "energy": out["energy"].detach(), "forces": out["forces"].detach()}, args["out"])
    print(json.dumps(times))
''')


def load_frame(r_max: float):
    from mlpot.data import AtomsDataset, read_frames

    frames = read_frames(DATA, type_map=["H", "O"])
    return AtomsDataset(frames, r_max)[0]


def run_peer(python: str, frame: dict, dtype: str, threads: int, repeats: int, workdir: Path):
    np.savez(workdir / "frame.npz", positions=frame["positions"], cell=frame["cell"], edge_index=frame["edge_index"],
             edge_shifts=frame["edge_shifts"], element=frame["atom_types"])
    script = workdir / "peer_mace.py"
    script.write_text(PEER_SCRIPT)
    args = dict(frame=str(workdir / "frame.npz"), dtype=dtype, threads=threads, repeats=repeats, hyper=HYPER,
                out=str(workdir / f"peer_{dtype}.pt"))
    # e3nn 0.4.4 loads its own constants with torch.load; torch 2.13 needs weights_only off for that file
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    result = subprocess.run([python, str(script), json.dumps(args)], capture_output=True, text=True, env=env)
    if result.returncode:
        raise RuntimeError(f"mace-torch failed:\n{result.stderr[-3000:]}")
    times = json.loads(result.stdout.strip().splitlines()[-1])
    peer = torch.load(workdir / f"peer_{dtype}.pt", weights_only=True)
    return times, peer


def build_mlpot(dtype: torch.dtype, peer_state=None):
    from mlpot.models.equivariant.mace.files import load_mace_state
    from mlpot.models.equivariant.mace.model import ScaleShiftMACE

    torch.manual_seed(0)
    model = ScaleShiftMACE(**HYPER, dtype=dtype)
    if peer_state is not None:
        load_mace_state(model, peer_state, "mace-torch state")
    return model


def time_mlpot(model, frame: dict, dtype: torch.dtype, repeats: int):
    from mlpot.data import collate
    from mlpot.data import keys as K
    from mlpot.models.derivatives import compute_derivatives

    batch = collate([frame], dtype=dtype)
    params = [p for p in model.parameters() if p.requires_grad]

    def infer():
        return compute_derivatives(model, batch, forces=True)

    def train():
        out = compute_derivatives(model, batch, forces=True, create_graph=True)
        loss = out[K.ENERGY].square().sum() + out[K.FORCES].square().sum()
        loss.backward(inputs=params)

    times = {}
    for name, step in (("inference", infer), ("training", train)):
        step()
        cpu, wall = [], []
        for _ in range(repeats):
            c, w = time.process_time(), time.perf_counter()
            step()
            cpu.append(time.process_time() - c)
            wall.append(time.perf_counter() - w)
        times[name] = {"cpu": statistics.median(cpu), "wall": statistics.median(wall)}
    out = infer()
    return times, out[K.ENERGY].detach(), out[K.FORCES].detach()


def profile_training(model, frame: dict, dtype: torch.dtype) -> None:
    """Top operators (self CPU time) of one mlpot training step."""
    from torch.profiler import profile

    from mlpot.data import collate
    from mlpot.data import keys as K
    from mlpot.models.derivatives import compute_derivatives

    batch = collate([frame], dtype=dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    with profile(record_shapes=True) as prof:
        out = compute_derivatives(model, batch, forces=True, create_graph=True)
        (out[K.ENERGY].square().sum() + out[K.FORCES].square().sum()).backward(inputs=params)
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=15,
                                                            max_name_column_width=24, max_shapes_column_width=60))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--peer-python", default="/work/peers/mace/bin/python")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also print mlpot's top operators of a training step")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    frame = load_frame(HYPER["r_max"])
    print(f"frame: {len(frame['positions'])} atoms, {frame['edge_index'].shape[1]} edges; {args.threads} thread(s); "
          f"CPU seconds per frame (wall in parentheses), median of {args.repeats}")
    peer_available = not args.skip_peer and Path(args.peer_python).exists()
    with tempfile.TemporaryDirectory() as tmp:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            peer_times, peer = run_peer(args.peer_python, frame, dtype_name, args.threads, args.repeats, Path(tmp)) \
                if peer_available else (None, None)
            model = build_mlpot(dtype, None if peer is None else peer["state"])
            times, energy, forces = time_mlpot(model, frame, dtype, args.repeats)
            if peer is not None:
                de = float((energy.double() - peer["energy"].double()).abs().max())
                df = float((forces.double() - peer["forces"].double()).abs().max())
                print(f"{dtype_name}: same model as mace-torch: |dE| = {de:.2e} eV, max |dF| = {df:.2e} eV/Å")
            if args.profile:
                profile_training(model, frame, dtype)
            for name in ("training", "inference"):
                ours = times[name]
                line = f"  {dtype_name} {name:9s} mlpot {ours['cpu']:7.3f} s ({ours['wall']:.3f})"
                if peer_times is not None:
                    theirs = peer_times[name]
                    line += (f"   mace-torch {theirs['cpu']:7.3f} s ({theirs['wall']:.3f})"
                             f"   ratio {theirs['cpu'] / ours['cpu']:5.2f}x")
                print(line)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
