"""Molecular dynamics through ASE's integrators, with a log, a trajectory and a summary.

mlpot has no MD code of its own: :func:`make_dynamics` builds one of ASE's integrators
(:data:`ENSEMBLES`) and :func:`run_md` drives it, logging every ``log_interval`` steps

    step  time/ps  T/K  E_pot/eV  E_kin/eV  E_tot/eV  P/bar

(P includes the kinetic term; "nan" for non-periodic systems), appending frames to an extxyz
trajectory, and returning an :class:`MDSummary`: the energy drift (slope of a least-squares line
through E_tot per atom against time, eV/atom/ps — the conserved quantity in NVE), the largest
deviation of E_tot per atom from its first value, and the throughput (steps/s, ns/day).

Units at this interface: timestep fs, temperature K, pressure bar, friction 1/fs, damping times
fs; converted to ASE units here only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
from ase import units

__all__ = ["ENSEMBLES", "MDSummary", "make_dynamics", "run_md", "energy_drift", "read_md_log", "LOG_COLUMNS"]

LOG_COLUMNS = ("step", "time_ps", "T_K", "E_pot_eV", "E_kin_eV", "E_tot_eV", "P_bar")

# ensemble name -> (ASE class path, what it is)
ENSEMBLES: Dict[str, str] = {
    "nve": "velocity Verlet (ase.md.verlet.VelocityVerlet)",
    "langevin": "NVT, Langevin thermostat (ase.md.langevin.Langevin; --friction)",
    "nose-hoover": "NVT, Nosé-Hoover chain (ase.md.nose_hoover_chain.NoseHooverChainNVT; --tdamp)",
    "bussi": "NVT, Bussi stochastic velocity rescaling (ase.md.bussi.Bussi; --tdamp)",
    "npt": "NPT, isotropic MTK barostat + Nosé-Hoover chains (ase.md.nose_hoover_chain.IsotropicMTKNPT; "
           "--tdamp, --pdamp, --pressure)",
    "npt-berendsen": "NPT, Berendsen (ase.md.nptberendsen.NPTBerendsen; --tdamp, --pdamp, --compressibility)",
}


@dataclass
class MDSummary:
    """What a run did: steps, wall time (s), timestep (fs), atoms; the E_tot drift (eV/atom/ps) and
    largest deviation (eV/atom) over the logged samples; throughput; the log records."""

    steps: int
    seconds: float
    timestep_fs: float
    n_atoms: int
    drift_ev_per_atom_ps: float
    max_deviation_ev_per_atom: float
    records: List[tuple] = field(default_factory=list)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("inf")

    @property
    def ns_per_day(self) -> float:
        return self.steps_per_second * self.timestep_fs * 1e-6 * 86400.0


def make_dynamics(atoms, ensemble: str, timestep_fs: float, temperature_K: float = 300.0, *,
                  friction: float = 0.01, tdamp_fs: Optional[float] = None, pressure_bar: float = 1.01325,
                  pdamp_fs: Optional[float] = None, compressibility_per_bar: float = 4.57e-5,
                  seed: Optional[int] = None):
    """The ASE integrator of ``ensemble`` (a key of :data:`ENSEMBLES`) for ``atoms``.

    friction: Langevin friction, 1/fs; tdamp_fs / pdamp_fs: thermostat / barostat time constants
    (default 100 and 1000 time steps); pressure_bar: target pressure; compressibility_per_bar:
    Berendsen's (water: 4.57e-5 /bar)."""
    from mlpot.errors import ConfigError, suggest

    if ensemble not in ENSEMBLES:
        close = suggest(ensemble, ENSEMBLES)
        raise ConfigError(f"unknown ensemble {ensemble!r}; choose one of {', '.join(ENSEMBLES)}", key="ensemble",
                          hint=f"did you mean {close!r}?" if close else None)
    dt = timestep_fs * units.fs
    tdamp = (tdamp_fs if tdamp_fs is not None else 100.0 * timestep_fs) * units.fs
    pdamp = (pdamp_fs if pdamp_fs is not None else 1000.0 * timestep_fs) * units.fs
    rng = np.random.default_rng(seed)
    if ensemble != "nve" and ensemble.startswith("npt") and not all(atoms.pbc):
        raise ConfigError(f"{ensemble} needs a fully periodic cell", key="ensemble")
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, dt)
    if ensemble == "langevin":
        from ase.md.langevin import Langevin

        return Langevin(atoms, dt, temperature_K=temperature_K, friction=friction / units.fs, fixcm=False, rng=rng)
    if ensemble == "nose-hoover":
        from ase.md.nose_hoover_chain import NoseHooverChainNVT

        return NoseHooverChainNVT(atoms, dt, temperature_K=temperature_K, tdamp=tdamp)
    if ensemble == "bussi":
        from ase.md.bussi import Bussi

        return Bussi(atoms, dt, temperature_K=temperature_K, taut=tdamp, rng=rng)
    if ensemble == "npt":
        from ase.md.nose_hoover_chain import IsotropicMTKNPT

        return IsotropicMTKNPT(atoms, dt, temperature_K=temperature_K, pressure_au=pressure_bar * units.bar,
                               tdamp=tdamp, pdamp=pdamp)
    from ase.md.nptberendsen import NPTBerendsen

    return NPTBerendsen(atoms, dt, temperature_K=temperature_K, pressure_au=pressure_bar * units.bar, taut=tdamp,
                        taup=pdamp, compressibility_au=compressibility_per_bar / units.bar, fixcm=False)


def energy_drift(times_ps: np.ndarray, total_energy: np.ndarray, n_atoms: int) -> float:
    """Slope of the least-squares line through E_tot / n_atoms against time: eV/atom/ps."""
    times_ps, total_energy = np.asarray(times_ps, dtype=np.float64), np.asarray(total_energy, dtype=np.float64)
    if len(times_ps) < 2 or np.ptp(times_ps) == 0:
        return 0.0
    return float(np.polyfit(times_ps, total_energy / n_atoms, 1)[0])


def _record(atoms, step: int, timestep_fs: float) -> tuple:
    e_pot = float(atoms.get_potential_energy())
    e_kin = float(atoms.get_kinetic_energy())
    pressure = float("nan")
    if all(atoms.pbc):
        pressure = float(-np.trace(atoms.get_stress(voigt=False, include_ideal_gas=True)) / 3.0 / units.bar)
    return (step, step * timestep_fs * 1e-3, float(atoms.get_temperature()), e_pot, e_kin, e_pot + e_kin, pressure)


def run_md(atoms, dynamics, steps: int, *, timestep_fs: float, log: Optional[Path] = None, log_interval: int = 10,
           trajectory: Optional[Path] = None, trajectory_interval: Optional[int] = None, progress: bool = True,
           on_record: Optional[Callable[[tuple], None]] = None) -> MDSummary:
    """Run ``steps`` steps of ``dynamics`` (an ASE integrator on ``atoms``) with the log and
    trajectory described in the module docstring; returns the summary."""
    from tqdm import tqdm

    records: List[tuple] = []
    log_handle = open(log, "w") if log is not None else None
    if trajectory is not None:
        Path(trajectory).unlink(missing_ok=True)
    trajectory_interval = trajectory_interval or log_interval
    first_step = dynamics.nsteps

    def write_record():
        step = dynamics.nsteps - first_step
        record = _record(atoms, step, timestep_fs)
        records.append(record)
        if log_handle is not None:
            log_handle.write(" ".join(f"{v:>10d}" if i == 0 else f"{v:16.8f}" for i, v in enumerate(record)) + "\n")
            log_handle.flush()
        if on_record is not None:
            on_record(record)

    def write_frame():
        from ase.io import write

        write(str(trajectory), atoms, format="extxyz", append=True)

    if log_handle is not None:
        log_handle.write(f"# atoms: {len(atoms)}\n")
        log_handle.write("# " + " ".join(f"{c:>16s}" for c in LOG_COLUMNS) + "\n")
    bar = tqdm(total=steps, desc="md", unit="step", disable=not progress, mininterval=0.5)
    try:
        dynamics.attach(write_record, interval=log_interval)
        if trajectory is not None:
            dynamics.attach(write_frame, interval=trajectory_interval)
        dynamics.attach(lambda: bar.update(1) if dynamics.nsteps > first_step else None, interval=1)
        start = time.perf_counter()
        dynamics.run(steps)
        seconds = time.perf_counter() - start
    finally:
        bar.close()
        dynamics.observers.clear()
        if log_handle is not None:
            log_handle.close()
    data = np.array([r[:7] for r in records], dtype=np.float64).reshape(-1, 7)
    n_atoms = len(atoms)
    drift = energy_drift(data[:, 1], data[:, 5], n_atoms)
    deviation = float(np.abs(data[:, 5] - data[0, 5]).max() / n_atoms) if len(data) else 0.0
    return MDSummary(steps, seconds, timestep_fs, n_atoms, drift, deviation, records)


def read_md_log(path: Path) -> Dict[str, np.ndarray]:
    """The columns of an ``mlpot md`` log: {column name: (n_records,) array}."""
    data = np.loadtxt(path, comments="#", ndmin=2)
    return {name: data[:, i] for i, name in enumerate(LOG_COLUMNS)}
