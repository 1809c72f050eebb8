"""mlpot.bands: neural empirical pseudopotentials fitted to band structures (DeePseudopot compatible).

Layers inside: inputs/basis/kpath (files, plane waves, paths) < zunger/potentials/models (v(q) forms)
< spin_orbit/eigen/hamiltonian (H(k) and its lowest levels) < loss/observables/engine/parallel (the
band problem) < native/setup (config and assembly) < prefit/gradient/montecarlo/zunger_mc/fit
(drivers) with outputs/plots for files and figures. Nothing here imports ``mlpot.config``.
"""
