"""Physical constants and unit conversions. The only place constants live.

Internal units: energy eV, length Å, charge e, potential V, field V/Å, time fs (MD) or ps (DeePMD
docs). Band-structure code works in atomic units internally (Hartree, Bohr) and converts here.
"""

import math

# CODATA 2018 values
BOHR_ANGSTROM = 0.529177210903  # Å per Bohr
HARTREE_EV = 27.211386245988  # eV per Hartree
RYDBERG_EV = HARTREE_EV / 2.0
ELEMENTARY_CHARGE = 1.602176634e-19  # C
EPSILON0_SI = 8.8541878128e-12  # F/m

# vacuum permittivity in e^2 / (eV Å)
EPSILON0 = EPSILON0_SI / ELEMENTARY_CHARGE * 1e-10  # = 5.526349406e-3
# Coulomb constant k_e = 1 / (4 pi eps0) in eV Å / e^2  (= 14.399645)
COULOMB_CONSTANT = 1.0 / (4.0 * math.pi * EPSILON0)
# 1/eps0 in eV Å / e^2 (MACE-SCF's FIELD_CONSTANT)
FIELD_CONSTANT = 1.0 / EPSILON0

# LAMMPS qqr2e·qe² (e²/(4π ε0)) in the energy·length units of `units metal` (eV Å) and `units real`
# (kcal/mol Å), as LAMMPS' pair zbl and NequIP's ZBL use them [COMPAT]
LAMMPS_QQR2E_METAL = 14.399645
LAMMPS_QQR2E_REAL = 332.06371

# mace-torch's ZBLBasis rounds the Coulomb constant (eV Å) and the Bohr radius (Å) [COMPAT]
MACE_ZBL_COULOMB = 14.3996
MACE_BOHR_ANGSTROM = 0.529

# pressure: 1 eV/Å^3 in GPa and bar
EV_PER_A3_TO_GPA = ELEMENTARY_CHARGE * 1e30 / 1e9
EV_PER_A3_TO_BAR = EV_PER_A3_TO_GPA * 1e4

# Madelung constant of the simple-cubic point-charge lattice used by the Makov-Payne correction
MADELUNG_CUBIC = 2.837297

# DeePseudopot's Hartree->eV factor (AUTOEV); its reference band files were written with it [COMPAT]
DEEPSEUDOPOT_HARTREE_EV = 27.2114
