"""Time and peak memory of Coulomb energy + forces of Gaussian multipole densities.

Periodic water-like boxes (O -0.8 e, H +0.4 e, random atomic dipoles of ~0.1 e·Å, sigma = 1.5 Å,
float64) of increasing size, and batches of increasing numbers of frames. Each measurement runs
in a fresh subprocess so that the peak resident memory (ru_maxrss) minus the RSS after setup is
the memory of that evaluation alone. Prints the fitted scaling exponents (log-log least squares)
and the ratios against graph-longrange 0.4.4 at 8 000 atoms (2.9 s, 3.5 GB on 2 CPU cores).

    OMP_NUM_THREADS=2 python benchmarks/electrostatics.py [--sizes 3 5 10 14 15] [--frames 1 2 4 8 16]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

PEER_8000 = {"time_s": 2.9, "memory_gb": 3.5, "exponent": 1.96}


def water_box(n_side: int, seed: int = 0):
    """n_side^3 water molecules on a jittered cubic lattice at liquid density (3.104 Å spacing)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    spacing = 3.104
    grid = torch.stack(torch.meshgrid(*[torch.arange(n_side, dtype=torch.float64)] * 3, indexing="ij"), -1).reshape(-1, 3)
    oxygen = (grid + 0.5) * spacing + 0.2 * (torch.rand(grid.shape, generator=g, dtype=torch.float64) - 0.5)
    u = torch.randn(grid.shape[0], 3, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    v = torch.randn(grid.shape[0], 3, generator=g, dtype=torch.float64)
    v = v - (v * u).sum(1, keepdim=True) * u
    v = v / v.norm(dim=1, keepdim=True)
    half = math.radians(104.5) / 2
    h1 = oxygen + 0.9572 * (math.cos(half) * u + math.sin(half) * v)
    h2 = oxygen + 0.9572 * (math.cos(half) * u - math.sin(half) * v)
    positions = torch.stack([oxygen, h1, h2], 1).reshape(-1, 3)
    charges = torch.tensor([-0.8, 0.4, 0.4], dtype=torch.float64).repeat(grid.shape[0])
    dipoles = 0.1 * torch.randn(positions.shape[0], 3, generator=g, dtype=torch.float64)
    cell = torch.eye(3, dtype=torch.float64) * spacing * n_side
    from mlpot.electrostatics import cartesian_to_multipoles

    return positions, cartesian_to_multipoles(charges, dipoles), cell


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def single(kind: str, n: int, repeats: int) -> dict:
    import torch

    from mlpot.data.keys import CELL, PBC, POSITIONS, PTR
    from mlpot.electrostatics import FrameWiseElectrostatics, coulomb_energy

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if kind == "size":
        positions, multipoles, cell = water_box(n)

        def run():
            pos = positions.clone().requires_grad_(True)
            energy = coulomb_energy(pos, multipoles, 1.5, cell, (True, True, True), "pbc")
            (forces,) = torch.autograd.grad(-energy, pos)
            return forces

        n_atoms = positions.shape[0]
    else:
        boxes = [water_box(4, seed=k) for k in range(n)]  # 192 atoms each
        electro = FrameWiseElectrostatics(sigma=1.5, method="pbc")
        batch = {
            POSITIONS: torch.cat([b[0] for b in boxes]),
            CELL: torch.stack([b[2] for b in boxes]),
            PBC: torch.ones(n, 3, dtype=torch.bool),
            PTR: torch.arange(n + 1) * boxes[0][0].shape[0],
        }
        multipoles = torch.cat([b[1] for b in boxes])

        def run():
            pos = batch[POSITIONS].clone().requires_grad_(True)
            energy = electro.compute({**batch, POSITIONS: pos}, multipoles, features=False)["energy"].sum()
            (forces,) = torch.autograd.grad(-energy, pos)
            return forces

        n_atoms = batch[POSITIONS].shape[0]
    base = _rss_mb()
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    # CPU seconds (all threads) are robust to other users' load on a shared machine
    return {"n_atoms": n_atoms, "time_s": min(times), "cpu_s": min(cpu), "peak_mb": max(peak, 0.0)}


def _measure(kind: str, n: int, repeats: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--single", kind, str(n), "--repeats", str(repeats)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fit(xs, ys) -> float:
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 5, 7, 10, 14, 15], help="molecules per box edge")
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="frames (192 atoms) per batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print(json.dumps(single(args.single[0], int(args.single[1]), args.repeats)))
        return 0
    print(f"threads={os.environ.get('OMP_NUM_THREADS', '2')} load={os.getloadavg()[0]:.2f} nproc={os.cpu_count()}")
    print(f"{'atoms':>8} {'wall (s)':>10} {'cpu (s)':>10} {'peak (MB)':>10}")
    sizes = []
    for n in args.sizes:
        r = _measure("size", n, args.repeats)
        sizes.append(r)
        print(f"{r['n_atoms']:>8} {r['time_s']:>10.4f} {r['cpu_s']:>10.4f} {r['peak_mb']:>10.1f}", flush=True)
    large = [r for r in sizes if r["n_atoms"] >= 500] or sizes
    if len(large) >= 2:
        print(f"wall-time exponent (>=500 atoms): {_fit([r['n_atoms'] for r in large], [r['time_s'] for r in large]):.2f}")
        print(f"cpu-time exponent (>=500 atoms): {_fit([r['n_atoms'] for r in large], [r['cpu_s'] for r in large]):.2f}")
        print(f"memory exponent (>=500 atoms): {_fit([r['n_atoms'] for r in large], [max(r['peak_mb'], 1e-3) for r in large]):.2f}")
    near = min(sizes, key=lambda r: abs(r["n_atoms"] - 8000))
    if abs(near["n_atoms"] - 8000) < 1000:
        print(
            f"at {near['n_atoms']} atoms: {PEER_8000['time_s'] / near['time_s']:.1f}x faster (wall), "
            f"{2 * PEER_8000['time_s'] / near['cpu_s']:.1f}x less CPU (peer: 2 cores busy) and "
            f"{PEER_8000['memory_gb'] * 1024 / max(near['peak_mb'], 1.0):.1f}x leaner than graph-longrange 0.4.4"
        )
    print(f"{'frames':>8} {'atoms':>8} {'wall (s)':>10} {'cpu (s)':>10} {'peak (MB)':>10}")
    frames = []
    for n in args.frames:
        r = _measure("frames", n, args.repeats)
        frames.append(r)
        print(f"{n:>8} {r['n_atoms']:>8} {r['time_s']:>10.4f} {r['cpu_s']:>10.4f} {r['peak_mb']:>10.1f}", flush=True)
    if len(frames) >= 2:
        print(f"time exponent vs frames: wall {_fit(args.frames, [r['time_s'] for r in frames]):.2f}, "
              f"cpu {_fit(args.frames, [r['cpu_s'] for r in frames]):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
