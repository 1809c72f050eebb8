"""``mlpot md MODEL STRUCTURE``: molecular dynamics with ASE's integrators and an mlpot model.

MODEL is a checkpoint, a frozen model (``mlpot freeze``) or a compiled one (``mlpot compile``);
STRUCTURE any file ASE reads (extxyz, POSCAR, cif, LAMMPS data, ...; ``--index`` picks a frame).
Ensembles (``--ensemble``): ``nve`` (velocity Verlet), ``langevin``, ``nose-hoover``, ``bussi``
(NVT), ``npt`` (isotropic MTK) and ``npt-berendsen``. Velocities: Maxwell-Boltzmann at
``--initial-temperature`` (default ``--temperature``; 0 keeps the file's momenta).

Writes ``--log`` (step, time/ps, T/K, E_pot/eV, E_kin/eV, E_tot/eV, P/bar every ``--log-interval``
steps), ``--trajectory`` (extxyz with energies, forces and momenta every ``--trajectory-interval``
steps) and, with ``--plot``, E_tot against time; prints the energy drift (eV/atom/ps, from a
linear fit; the conserved quantity in NVE) and the throughput (steps/s, ns/day).
"""

from __future__ import annotations

from pathlib import Path

from mlpot.errors import ConfigError


def add_arguments(parser) -> None:
    from mlpot.calculators.md import ENSEMBLES

    parser.add_argument("model", help="checkpoint, frozen (.pt) or compiled (.pt2) model")
    parser.add_argument("structure", help="structure file (any format ASE reads)")
    parser.add_argument("--index", default="0", help="frame of the structure file (ASE index, default 0)")
    parser.add_argument("--ensemble", default="nve", help="; ".join(f"{k}: {v}" for k, v in ENSEMBLES.items()))
    parser.add_argument("--timestep", type=float, default=0.5, help="time step, fs (default 0.5)")
    parser.add_argument("--steps", type=int, default=1000, help="number of steps (default 1000)")
    parser.add_argument("--temperature", type=float, default=300.0, help="thermostat temperature, K (default 300)")
    parser.add_argument("--initial-temperature", type=float, default=None,
                        help="Maxwell-Boltzmann velocities at this temperature, K (default --temperature; 0: keep the file's)")
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs (default 0.01)")
    parser.add_argument("--tdamp", type=float, default=None, help="thermostat time constant, fs (default 100 steps)")
    parser.add_argument("--pressure", type=float, default=1.01325, help="NPT pressure, bar (default 1 atm)")
    parser.add_argument("--pdamp", type=float, default=None, help="barostat time constant, fs (default 1000 steps)")
    parser.add_argument("--compressibility", type=float, default=4.57e-5, help="npt-berendsen compressibility, 1/bar")
    parser.add_argument("--seed", type=int, default=None, help="seed of the velocities and stochastic thermostats")
    parser.add_argument("--trajectory", "-t", type=Path, default=Path("md.extxyz"), help="extxyz trajectory")
    parser.add_argument("--trajectory-interval", type=int, default=None, help="steps between frames (default: --log-interval)")
    parser.add_argument("--log", "-l", type=Path, default=Path("md.log"), help="log file")
    parser.add_argument("--log-interval", type=int, default=10, help="steps between log lines (default 10)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of E_tot (and E_pot, T) against time")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default=None, help="model precision (default: the model's)")
    parser.add_argument("--skin", type=float, default=1.0, help="neighbour-list skin, Å (default 1)")
    parser.add_argument("--head", default=None, help="task of a multi-task model")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    import numpy as np
    from ase.io import read
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    from mlpot.calculators import MlpotCalculator
    from mlpot.calculators.md import make_dynamics, run_md

    if args.steps < 0 or args.timestep <= 0 or args.log_interval < 1:
        raise ConfigError("need --steps >= 0, --timestep > 0 and --log-interval >= 1", key="md")
    atoms = read(args.structure, index=args.index)
    atoms.calc = MlpotCalculator(args.model, device=args.device, dtype=args.dtype, skin=args.skin, head=args.head)
    initial = args.temperature if args.initial_temperature is None else args.initial_temperature
    if initial > 0:
        thermalize_momenta(atoms, initial, rng=np.random.default_rng(args.seed))
        Stationary(atoms)
    dynamics = make_dynamics(atoms, args.ensemble, args.timestep, args.temperature, friction=args.friction,
                             tdamp_fs=args.tdamp, pressure_bar=args.pressure, pdamp_fs=args.pdamp,
                             compressibility_per_bar=args.compressibility, seed=args.seed)
    print(f"md: {len(atoms)} atoms, {args.ensemble}, {args.steps} steps of {args.timestep} fs, "
          f"model {args.model} ({atoms.calc.runner.kind}, {str(atoms.calc.runner.dtype).replace('torch.', '')})")
    summary = run_md(atoms, dynamics, args.steps, timestep_fs=args.timestep, log=args.log,
                     log_interval=args.log_interval, trajectory=args.trajectory,
                     trajectory_interval=args.trajectory_interval, progress=not args.no_progress)
    last = summary.records[-1]
    print(f"final: T {last[2]:.1f} K, E_pot {last[3]:.6f} eV, E_tot {last[5]:.6f} eV")
    label = "energy drift" if args.ensemble == "nve" else "E_tot drift (not conserved with a thermostat)"
    print(f"{label}: {summary.drift_ev_per_atom_ps:.3e} eV/atom/ps (linear fit); "
          f"max |E_tot - E_tot(0)|: {summary.max_deviation_ev_per_atom:.3e} eV/atom")
    print(f"throughput: {summary.steps_per_second:.2f} steps/s, {summary.ns_per_day:.4f} ns/day "
          f"({summary.seconds:.1f} s for {summary.steps} steps)")
    print(f"wrote {args.log} and {args.trajectory}")
    if args.plot is not None:
        from mlpot.commands.plot import plot_md

        print(f"wrote {plot_md(args.log, args.plot)}")
    return 0
