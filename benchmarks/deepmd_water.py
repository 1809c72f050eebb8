"""Speed of the water se_e2_a example model (spec deepmd.md §10) on 192-atom frames.

Prints, for float64 and float32 with 2 torch threads: the training-step time (energy + forces loss,
backward with create_graph to the parameters only, Adam step; batch 1) and the inference time
(energy + forces) per frame, and the ratio to DeePMD-kit 3.2 PT (0.17 s / 0.10 s per training step in float64 /
float32; 0.11 s per frame for `dp test` in float64), measured by the spec on a 2-core Xeon.
Neighbour lists are built once per frame (cached, as in training); the sel matrix, env matrix,
nets and derivatives are all inside the timed region. Side by side in the same run it also times
the dense evaluation over all N_c slots (DeePMD-kit's formulation, ``skip_padding = False``), a
fair same-machine ratio when the machine is not idle.

Run: ``OMP_NUM_THREADS=2 python benchmarks/deepmd_water.py [--steps 30] [--data PATH]``.
Only meaningful on an idle machine: compare ratios, not absolute times, on a loaded one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mlpot.data import AtomsDataset, collate, read_frames
from mlpot.data import keys as K
from mlpot.models import build_model
from mlpot.models.derivatives import compute_derivatives
from mlpot.training.optim import build_optimizer

WATER_SE_A = {
    "type_map": ["O", "H"],
    "descriptor": {"type": "se_e2_a", "sel": [46, 92], "rcut_smth": 0.5, "rcut": 6.0, "neuron": [25, 50, 100],
                   "resnet_dt": False, "axis_neuron": 16, "type_one_side": True, "seed": 1},
    "fitting_net": {"neuron": [240, 240, 240], "resnet_dt": True, "seed": 1},
}
DEEPMD_PT = {"train": {torch.float64: 0.17, torch.float32: 0.10}, "infer": {torch.float64: 0.11}}


def time_model(dtype, batches, steps, warmup=3, dense=False):
    torch.manual_seed(0)
    model = build_model(WATER_SE_A, dtype=dtype)
    model.compute_statistics(batches[:4])
    model.descriptor.skip_padding = not dense
    optimizer = build_optimizer("adam", model.parameters(), lr=1e-3)  # as the trainer builds it (fused)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def train_step(batch):
        out = compute_derivatives(model, batch, forces=True, create_graph=True)
        n_atoms = batch[K.POSITIONS].shape[0]
        loss = 0.02 * ((out[K.ENERGY] - batch[K.ENERGY]) ** 2).mean() / n_atoms + 1000.0 * ((out[K.FORCES] - batch[K.FORCES]) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=trainable)  # as the trainer: parameter gradients only
        optimizer.step()

    def infer(batch):
        out = compute_derivatives(model, batch, forces=True)
        return out[K.FORCES].detach()

    results = {}
    for name, fn in (("train", train_step), ("infer", infer)):
        for k in range(warmup):
            fn(batches[k % len(batches)])
        start = time.perf_counter()
        for k in range(steps):
            fn(batches[k % len(batches)])
        results[name] = (time.perf_counter() - start) / steps
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "deepmd_water" / "data_0"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=["float64", "float32", "both"], default="both")
    parser.add_argument("--no-dense", action="store_true", help="skip the side-by-side dense (DeePMD-style) timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    frames = read_frames(args.data, type_map=["O", "H"])
    dataset = AtomsDataset(frames[:10], 6.0)
    batches = [collate([dataset[i]]) for i in range(len(dataset))]
    dtypes = [torch.float64, torch.float32] if args.dtype == "both" else [getattr(torch, args.dtype)]
    print(f"water se_e2_a, 192 atoms, batch 1, {args.threads} threads, {args.steps} timed steps")
    for dtype in dtypes:
        result = time_model(dtype, batches, args.steps)
        dense = None if args.no_dense else time_model(dtype, batches, args.steps, dense=True)
        for kind in ("train", "infer"):
            reference = DEEPMD_PT[kind].get(dtype)
            ratio = f"  {reference / result[kind]:.2f}x vs DeePMD-kit PT ({reference:.2f} s)" if reference else ""
            same_run = f"  {dense[kind] / result[kind]:.2f}x vs dense all-slot evaluation in this run ({dense[kind]:.4f} s)" if dense else ""
            label = "training step" if kind == "train" else "inference (E+F) per frame"
            print(f"{str(dtype).replace('torch.', ''):8s} {label:26s} {result[kind]:.4f} s{ratio}{same_run}")

if __name__ == "__main__":
    main()
