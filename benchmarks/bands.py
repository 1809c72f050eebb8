"""Seconds per band-fitting epoch and per band evaluation on the shipped bundles (not a timed test).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bands.py [--threads 2] [--epochs 3]

cdse_zb (1 system, 61 k, 453 PWs compat basis) and ingaasp (4 systems x 61 k, 175-217 PWs), NN
Net_relu_xavier_decayGaussian 20-20-20, separateKptGrad on (chunks of 8 k), Adam. DeePseudopot's
figure on cdse_zb (2 threads, same NN): about 27 s per training epoch + 10 s per band evaluation.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlpot.bands.engine import BandProblem  # noqa: E402
from mlpot.bands.hamiltonian import PlaneWaveSystem  # noqa: E402
from mlpot.bands.inputs import read_system_bundle, species_order  # noqa: E402
from mlpot.bands.models import build_pp_model  # noqa: E402
from mlpot.bands.setup import read_species_params  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "bands"
DEEPSEUDOPOT_CDSE = {"epoch": 27.0, "eval": 10.0}


def bench(name: str, n_systems: int, basis: str, epochs: int, separate: bool = True):
    folder = DATA / name
    systems = [read_system_bundle(folder, i) for i in range(n_systems)]
    species = species_order(systems)
    params = read_species_params(folder, species)
    t0 = time.perf_counter()
    pws = [PlaneWaveSystem(s, species, params, basis_mode=basis) for s in systems]
    problem = BandProblem(pws, params, kpt_chunk=8)
    setup = time.perf_counter() - t0
    torch.manual_seed(0)
    model = build_pp_model("Net_relu_xavier_decayGaussian", [1, 20, 20, 20, len(species)], {"PPmodel_gaussian_std": 3.0})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        optimizer.zero_grad()
        problem.loss_and_backward(model, separate=separate)
        optimizer.step()
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    problem.evaluate(model)
    evaluation = time.perf_counter() - t0
    epoch = min(times)
    print(f"{name:8s} systems={n_systems} PWs={[pw.n_g for pw in pws]} k={problem.n_kpoints} setup={setup:.2f}s "
          f"epoch={epoch:.2f}s (all: {', '.join(f'{t:.2f}' for t in times)}) eval={evaluation:.2f}s")
    return epoch, evaluation


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    epoch, evaluation = bench("cdse_zb", 1, "compat", args.epochs)
    print(f"cdse_zb vs DeePseudopot: epoch {DEEPSEUDOPOT_CDSE['epoch'] / epoch:.1f}x faster, "
          f"eval {DEEPSEUDOPOT_CDSE['eval'] / evaluation:.1f}x faster")
    bench("ingaasp", 4, "compat", args.epochs)


if __name__ == "__main__":
    main()
