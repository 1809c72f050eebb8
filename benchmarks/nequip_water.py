"""Speed of mlpot's NequIP model against NequIP 0.19.1 on 192-atom water frames (not a timed test).

Model (both codes, same hyperparameters): 3 layers, 32 features per l, l_max 1 and 2, parity on,
r_max 4.5 Å, 8 Bessel functions, p = 6, radial MLP 1 x 128 (NequIP defaults), per-type scales and
shifts, avg_num_neighbors 40. Data: the first frames of ``deepmd_water/data_0`` (192 atoms,
≈ 8 000 directed edges at 4.5 Å), batch 1.

Times are the fastest step over ``--rounds`` alternating rounds of ``--steps`` steps of each code
(robust to other load on a shared machine: both codes see it alike).

* training step: energy + forces, per-atom-energy MSE + force MSE, ``loss.backward(inputs=params)``
  (parameter gradients only), Adam step;
* inference: energy + forces of one frame.

NequIP runs in a subprocess of the venv ``/work/peers/nequip`` (``--nequip-python``) when it exists,
measured in the same run; neighbour lists are built once per frame on both sides (outside the timed
region). Run one at a time on an otherwise idle machine:

    OMP_NUM_THREADS=2 python benchmarks/nequip_water.py [--threads 2] [--rounds 5] [--steps 4] [--lmax 1 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "deepmd_water" / "data_0"
NEQUIP_PYTHON = Path("/work/peers/nequip/bin/python")


def model_config(l_max: int, dtype: str) -> dict:
    return {"type_names": ["O", "H"], "r_max": 4.5, "num_layers": 3, "l_max": l_max, "num_features": 32, "seed": 1,
            "model_dtype": dtype, "avg_num_neighbors": 40.0, "per_type_energy_scales": {"O": 1.0, "H": 0.7},
            "per_type_energy_shifts": {"O": -93.5, "H": -187.1}}


def mlpot_runner(l_max: int, dtype: str, n_frames: int):
    """A function (name, steps) -> step times of mlpot's model, warmed up; and the number of edges."""
    from mlpot.data import AtomsDataset, collate, read_frames
    from mlpot.data import keys as K
    from mlpot.models.derivatives import compute_derivatives
    from mlpot.models.equivariant.nequip import build_nequip

    model = build_nequip(model_config(l_max, dtype))
    frames = read_frames(DATA, type_map=["O", "H"])[:n_frames]
    dataset = AtomsDataset(frames, model.cutoff)
    batches = [collate([dataset[i]]) for i in range(len(dataset))]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)

    def train_step(batch):
        out = compute_derivatives(model, batch, forces=True, create_graph=True)
        n_atoms = batch[K.POSITIONS].shape[0]
        loss = ((out[K.ENERGY] - batch[K.ENERGY]) / n_atoms).square().mean() + (out[K.FORCES] - batch[K.FORCES]).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=params)
        optimizer.step()

    def infer(batch):
        return compute_derivatives(model, batch, forces=True)[K.FORCES].detach()

    functions = {"train": train_step, "infer": infer}
    for fn in functions.values():
        for k in range(2):
            fn(batches[k % len(batches)])

    def run(name: str, steps: int, clock=time.perf_counter):
        times = []
        for k in range(steps):
            start = clock()
            functions[name](batches[k % len(batches)])
            times.append(clock() - start)
        return times

    return run, int(batches[0][K.EDGE_INDEX].shape[1])


_NEQUIP_SCRIPT = r"""
import json, sys, time
import numpy as np, torch, ase
args = json.loads(sys.argv[1])
from nequip.utils.global_state import set_global_state
set_global_state()
torch.set_num_threads(args["threads"])
from nequip.model import NequIPGNNModel
from nequip.data import AtomicDataDict, from_ase
from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
folder = args["data"]
type_map = open(folder + "/type_map.raw").read().split()
types = np.loadtxt(folder + "/type.raw", dtype=int)
coords = np.load(folder + "/set.000/coord.npy")[: args["n_frames"]]
boxes = np.load(folder + "/set.000/box.npy")[: args["n_frames"]]
energies = np.load(folder + "/set.000/energy.npy")[: args["n_frames"]]
forces = np.load(folder + "/set.000/force.npy")[: args["n_frames"]]
config = args["config"]
transforms = [ChemicalSpeciesToAtomTypeMapper(model_type_names=config["type_names"]), NeighborListTransform(r_max=config["r_max"])]
batches = []
for c, b, e, f in zip(coords, boxes, energies, forces):
    atoms = ase.Atoms([type_map[t] for t in types], positions=c.reshape(-1, 3), cell=b.reshape(3, 3), pbc=True)
    data = from_ase(atoms)
    for t in transforms:
        data = t(data)
    data = AtomicDataDict.batched_from_list([data])
    data["ref_energy"] = torch.tensor([float(e)], dtype=torch.float64)
    data["ref_forces"] = torch.tensor(f.reshape(-1, 3), dtype=torch.float64)
    batches.append(data)
model = NequIPGNNModel(**config)
params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.Adam(params, lr=1e-3)

def strip(batch):
    return {k: v for k, v in batch.items() if not k.startswith("ref_")}

def train_step(batch):
    model.train()
    out = model(strip(batch))
    n = batch[AtomicDataDict.POSITIONS_KEY].shape[0]
    loss = ((out["total_energy"].reshape(-1) - batch["ref_energy"]) / n).square().mean() + (out["forces"] - batch["ref_forces"]).square().mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    optimizer.step()

def infer(batch):
    model.eval()
    return model(strip(batch))["forces"].detach()

functions = {"train": train_step, "infer": infer}
for name in functions:
    for k in range(2):
        functions[name](batches[k % len(batches)])
print("READY " + json.dumps({"edges": int(batches[0][AtomicDataDict.EDGE_INDEX_KEY].shape[1])}), flush=True)
for line in sys.stdin:
    name, steps, clock = line.split()
    clock = getattr(time, clock)
    times = []
    for k in range(int(steps)):
        start = clock()
        functions[name](batches[k % len(batches)])
        times.append(clock() - start)
    print("TIMES " + json.dumps(times), flush=True)
"""


class NequIPRunner:
    """NequIP 0.19.1 in a subprocess of its venv, warmed up; ``run(name, steps)`` -> step times."""

    def __init__(self, python: Path, l_max: int, dtype: str, n_frames: int, threads: int):
        args = {"config": model_config(l_max, dtype), "data": str(DATA), "n_frames": n_frames, "threads": threads}
        self.process = subprocess.Popen([str(python), "-c", _NEQUIP_SCRIPT, json.dumps(args)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.edges = json.loads(self._expect("READY "))["edges"]

    def _expect(self, prefix: str) -> str:
        for line in self.process.stdout:
            if line.startswith(prefix):
                return line[len(prefix):]
        raise RuntimeError(f"NequIP run failed:\n{self.process.stderr.read()[-3000:]}")

    def run(self, name: str, steps: int, clock=time.perf_counter):
        self.process.stdin.write(f"{name} {steps} {clock.__name__}\n")
        self.process.stdin.flush()
        return json.loads(self._expect("TIMES "))

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--lmax", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtype", choices=["float64", "float32", "both"], default="both")
    parser.add_argument("--nequip-python", default=str(NEQUIP_PYTHON))
    parser.add_argument("--skip-nequip", action="store_true")
    parser.add_argument("--clock", choices=["perf_counter", "process_time"], default="perf_counter",
                        help="wall time, or CPU time of the process (with 1 thread: robust to an oversubscribed machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = getattr(time, args.clock)
    dtypes = ["float64", "float32"] if args.dtype == "both" else [args.dtype]
    python = Path(args.nequip_python)
    have_nequip = python.exists() and not args.skip_nequip
    print(f"NequIP water benchmark: 192 atoms, batch 1, 3 layers x 32 features, r_max 4.5, {args.threads} threads, "
          f"{args.rounds} x {args.steps} alternating timed steps ({args.clock}); NequIP 0.19.1 {'from ' + str(python) if have_nequip else 'not measured'}")
    for l_max in args.lmax:
        for dtype in dtypes:
            mine, edges = mlpot_runner(l_max, dtype, args.frames)
            theirs = NequIPRunner(python, l_max, dtype, args.frames, args.threads) if have_nequip else None
            best = {}
            # alternate short rounds of both codes so that other load on the machine hits both alike
            for _ in range(args.rounds):
                for kind in ("train", "infer"):
                    best[("mlpot", kind)] = min([best.get(("mlpot", kind), float("inf"))] + mine(kind, args.steps, clock))
                    if theirs:
                        best[("nequip", kind)] = min([best.get(("nequip", kind), float("inf"))] + theirs.run(kind, args.steps, clock))
            if theirs:
                theirs.close()
            for kind, label in (("train", "training step"), ("infer", "inference E+F / frame")):
                ours = best[("mlpot", kind)]
                ratio = f"  NequIP {best[('nequip', kind)]:.4f} s  -> {best[('nequip', kind)] / ours:.2f}x" if theirs else ""
                print(f"l_max {l_max} {dtype:8s} {label:22s} mlpot {ours:.4f} s{ratio}   ({edges} edges)", flush=True)


if __name__ == "__main__":
    main()
