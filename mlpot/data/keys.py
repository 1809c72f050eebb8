"""Key names of the batch dictionary, defined once.

A batch is a ``dict[str, torch.Tensor]`` holding one or more frames concatenated along the atom
(and edge) dimension. Every key is described here with its *level* (per ``atom``, per ``edge`` or
per ``frame``), the trailing shape of one item, its dtype kind and its unit. Batching, splitting and
export read these records; no other module spells a key as a raw string.

Conventions
-----------
* ``edge_index[0]`` is the centre atom i, ``edge_index[1]`` the neighbour j; the edge vector is
  ``r_ij = positions[j] - positions[i] + edge_shifts @ cell`` (shifts are integer multiples of the
  cell rows, stored as float).
* ``cell`` rows are the lattice vectors (ASE / DeePMD convention). A non-periodic frame keeps its
  cell (possibly all zeros) and has ``pbc = [False, False, False]``.
* Every label ``X`` has a per-frame weight ``X_weight`` (1 = present, 0 = missing; a missing label
  never counts as zero in a loss). ``dipole_weight`` may be a 3-vector (per-component mask).
  A *gated* input (``DRDQ``) has such a weight too (DeePMD's ``find_*`` flag) without being a
  target. An input with a ``default`` (``ATOM_ENER_COEFF``, ``ATOM_WEIGHT``: 1) takes it in a
  frame that lacks the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = [
    "KeySpec",
    "KEYS",
    "LABELS",
    "WEIGHTED",
    "weight_key",
    "level_of",
    # structure / inputs
    "POSITIONS", "ATOM_TYPES", "NUMBERS", "CELL", "PBC", "BATCH", "N_ATOMS", "PTR",
    "EDGE_INDEX", "EDGE_SHIFTS", "FPARAM", "APARAM", "TOTAL_CHARGE", "FERMI_LEVEL",
    "EXTERNAL_FIELD", "FRAME_ID", "ISOLATED_ATOM", "SPIN", "MAG_MASK",
    # labels
    "ENERGY", "ATOM_ENERGY", "FORCES", "VIRIAL", "STRESS", "CHARGES", "ATOMIC_MULTIPOLES",
    "DIPOLE", "ATOMIC_DIPOLE", "POLARIZABILITY", "ATOMIC_POLARIZABILITY", "ESPS", "DOS",
    "ATOM_DOS", "ATOM_PREF", "HESSIAN", "FORCE_MAG",
    # per-atom loss inputs
    "ATOM_ENER_COEFF", "ATOM_WEIGHT", "DRDQ",
    # self-consistent electrostatics
    "MOL_ID", "INITIAL_MULTIPOLES", "INITIAL_FERMI_LEVEL", "ELECTROSTATIC_ENERGY", "FIELD_FEATURES",
    "REFERENCE_FIELD_FEATURES", "REFERENCE_ESPS", "SCF_STABILITY", "SCF_CONVERGED", "SCF_STEPS",
]


@dataclass(frozen=True)
class KeySpec:
    """Description of one batch key.

    level: "atom" | "edge" | "frame"; shape: trailing shape of one item (() for scalars, -1 for a
    size fixed per dataset such as numb_dos); kind: "float" | "int" | "bool"; unit: physical unit.
    label: True for a learnable target that carries a ``<key>_weight``.
    gated: True for an input that carries a ``<key>_weight`` (present or not) without being a target.
    default: value of the key in a frame that lacks it (None: no default).
    ragged: a frame-level key whose width depends on the frame's atom count (HESSIAN, (3N)^2 values):
    batching pads each frame's row with zeros to the widest (mask the padding by N_ATOMS).
    """

    name: str
    level: str
    shape: Tuple[int, ...]
    kind: str
    unit: str
    doc: str
    label: bool = False
    gated: bool = False
    default: Optional[float] = None
    ragged: bool = False


KEYS: Dict[str, KeySpec] = {}


def _key(name, level, shape, kind, unit, doc, label=False, gated=False, default=None, ragged=False) -> str:
    if name in KEYS:
        raise ValueError(f"duplicate batch key {name!r}")
    KEYS[name] = KeySpec(name, level, tuple(shape), kind, unit, doc, label, gated, default, ragged)
    return name


# ---- structure and inputs -------------------------------------------------------------
POSITIONS = _key("positions", "atom", (3,), "float", "Å", "Cartesian positions (n_atoms, 3)")
ATOM_TYPES = _key("atom_types", "atom", (), "int", "-", "type index into the model's type_map (n_atoms,)")
NUMBERS = _key("numbers", "atom", (), "int", "-", "atomic numbers Z (n_atoms,); 0 when unknown")
CELL = _key("cell", "frame", (3, 3), "float", "Å", "lattice vectors as rows (n_frames, 3, 3)")
PBC = _key("pbc", "frame", (3,), "bool", "-", "periodicity per cell direction (n_frames, 3)")
BATCH = _key("batch", "atom", (), "int", "-", "frame index of each atom (n_atoms,)")
N_ATOMS = _key("n_atoms", "frame", (), "int", "-", "atoms per frame (n_frames,)")
PTR = _key("ptr", "frame", (), "int", "-", "offsets of each frame's first atom (n_frames + 1,)")
FRAME_ID = _key("frame_id", "frame", (), "int", "-", "index of the frame in its dataset (n_frames,)")
ISOLATED_ATOM = _key(
    "isolated_atom", "frame", (), "bool", "-",
    "the frame is one isolated reference atom (extxyz config_type=IsolatedAtom, MACE): its energy is the element's "
    "E0 (n_frames,)", default=0.0,
)
EDGE_INDEX = _key("edge_index", "edge", (), "int", "-", "(2, n_edges): row 0 centre i, row 1 neighbour j")
EDGE_SHIFTS = _key("edge_shifts", "edge", (3,), "float", "-", "integer cell shifts of neighbour j (n_edges, 3)")
FPARAM = _key("fparam", "frame", (-1,), "float", "any", "frame parameters (n_frames, numb_fparam)")
APARAM = _key("aparam", "atom", (-1,), "float", "any", "atomic parameters (n_atoms, numb_aparam)")
TOTAL_CHARGE = _key("total_charge", "frame", (), "float", "e",
                    "net charge of the frame (n_frames,); an input of charge-aware models (default 0) and the "
                    "target of the total_charge losses, hence its presence weight", gated=True)
EXTERNAL_FIELD = _key(
    "external_field", "frame", (3,), "float", "V/Å",
    "gradient of the applied potential, i.e. minus the physical E-field (n_frames, 3)",
)
SPIN = _key("spin", "atom", (3,), "float", "μB",
            "atomic spin (magnetic moment) vector (n_atoms, 3); zero on non-magnetic atoms (deepmd spin.npy); "
            "an input of spin models")
MAG_MASK = _key("mag_mask", "atom", (), "float", "-",
                "1 on atoms of a magnetic type (DeePMD use_spin), 0 elsewhere (n_atoms,) (output of spin models)")

# ---- labels ---------------------------------------------------------------------------
ENERGY = _key("energy", "frame", (), "float", "eV", "total energy (n_frames,)", True)
ATOM_ENERGY = _key("atom_energy", "atom", (), "float", "eV", "per-atom energy (n_atoms,)", True)
FORCES = _key("forces", "atom", (3,), "float", "eV/Å", "forces (n_atoms, 3)", True)
VIRIAL = _key("virial", "frame", (3, 3), "float", "eV", "virial, DeePMD sign convention (n_frames, 3, 3)", True)
STRESS = _key("stress", "frame", (3, 3), "float", "eV/Å^3", "stress = -virial / volume (n_frames, 3, 3)", True)
CHARGES = _key("charges", "atom", (), "float", "e", "atomic charges (n_atoms,)", True)
ATOMIC_MULTIPOLES = _key(
    "atomic_multipoles", "atom", (-1,), "float", "e, e·Å",
    "Gaussian multipole coefficients [Q, d_y, d_z, d_x, ...] (n_atoms, (L+1)^2)", True,
)
DIPOLE = _key("dipole", "frame", (3,), "float", "e·Å (or dataset unit)", "Cartesian dipole (n_frames, 3)", True)
ATOMIC_DIPOLE = _key("atomic_dipole", "atom", (3,), "float", "dataset unit", "atomic dipoles (n_atoms, 3)", True)
POLARIZABILITY = _key(
    "polarizability", "frame", (3, 3), "float", "e·Å^2/V (or dataset unit)", "polarizability (n_frames, 3, 3)", True
)
ATOMIC_POLARIZABILITY = _key(
    "atomic_polarizability", "atom", (3, 3), "float", "dataset unit", "atomic polarizabilities (n_atoms, 3, 3)", True
)
FERMI_LEVEL = _key("fermi_level", "frame", (), "float", "eV", "Fermi level (n_frames,)", True)
ESPS = _key("esps", "atom", (), "float", "V", "electrostatic potential at each nucleus (n_atoms,)", True)
DOS = _key("dos", "frame", (-1,), "float", "states/eV", "density of states (n_frames, numb_dos)", True)
ATOM_DOS = _key("atom_dos", "atom", (-1,), "float", "states/eV", "atomic DOS (n_atoms, numb_dos)", True)
HESSIAN = _key("hessian", "frame", (-1,), "float", "eV/Å^2",
               "d^2E/dR^2 of each frame flattened row-major, (3N)^2 values in atom order (x, y, z per atom) "
               "(deepmd hessian.npy); batched zero-padded to the widest frame (n_frames, (3 N_max)^2)",
               True, ragged=True)
FORCE_MAG = _key("force_mag", "atom", (3,), "float", "eV/μB",
                 "magnetic force -dE/d(spin) (n_atoms, 3) (deepmd force_mag.npy); compared on magnetic atoms only",
                 True)
ATOM_PREF = _key("atom_pref", "atom", (), "float", "-", "per-atom force weight (n_atoms,)")

# ---- self-consistent electrostatic models: inputs, outputs, loss inputs --------------
MOL_ID = _key("mol_id", "atom", (), "int", "-",
              "molecule index of each atom within its frame (MACE-SCF molID; cluster_virial, molecular_forces losses)",
              gated=True)
INITIAL_MULTIPOLES = _key(
    "initial_multipoles", "atom", (-1,), "float", "e, e·Å",
    "initial SCF density [Q, d_y, d_z, d_x] (n_atoms, (L+1)^2), e.g. the previous MD step's converged one")
INITIAL_FERMI_LEVEL = _key("initial_fermi_level", "frame", (), "float", "eV",
                           "initial Fermi level of a constant-charge SCF (n_frames,)")
ELECTROSTATIC_ENERGY = _key("electrostatic_energy", "frame", (), "float", "eV",
                            "Coulomb energy of the model's density (n_frames,) (output)")
FIELD_FEATURES = _key("field_features", "atom", (-1,), "float", "-",
                      "normalised field features of the predicted density without the Fermi-level term "
                      "(n_atoms, n_features) (output)")
REFERENCE_FIELD_FEATURES = _key("reference_field_features", "atom", (-1,), "float", "-",
                                "the same features of the reference multipoles (n_atoms, n_features) (output)")
REFERENCE_ESPS = _key("reference_esps", "atom", (), "float", "V",
                      "ESPs of the reference multipoles by the model's electrostatics (n_atoms,) (output)")
SCF_STABILITY = _key("scf_stability", "frame", (), "float", "-",
                     "|G(p + d) - G(p)|^2 / |d|^2 for a small random d at the final density (n_frames,) (output)")
SCF_CONVERGED = _key("scf_converged", "frame", (), "float", "-", "1 where the frame's SCF converged (n_frames,) (output)")
SCF_STEPS = _key("scf_steps", "frame", (), "int", "-", "SCF steps to convergence per frame (n_frames,) (output)")

# ---- per-atom inputs of DeePMD loss options ------------------------------------------
ATOM_ENER_COEFF = _key(
    "atom_ener_coeff", "atom", (), "float", "-",
    "coefficient c_i of the atom in the loss energy E = sum_i c_i E_i (DeePMD enable_atom_ener_coeff) (n_atoms,)",
    default=1.0,
)
ATOM_WEIGHT = _key(
    "atom_weight", "atom", (), "float", "-",
    "weight multiplying the atom's atomic-label residual (DeePMD enable_atomic_weight) (n_atoms,)", default=1.0,
)
DRDQ = _key(
    "drdq", "atom", (-1,), "float", "Å per unit of q",
    "dr/dq: derivatives of the atom's 3 coordinates w.r.t. the n_gen generalised coordinates q, "
    "(n_atoms, 3 * n_gen) = (n_atoms, 3, n_gen) row-major (DeePMD generalised-force loss)", gated=True,
)

LABELS = tuple(name for name, spec in KEYS.items() if spec.label)
# keys that carry a per-frame presence weight: labels and gated inputs
WEIGHTED = tuple(name for name, spec in KEYS.items() if spec.label or spec.gated)


def weight_key(label: str) -> str:
    """Name of the per-frame weight of a label or gated input (e.g. ``energy_weight``); shape (n_frames,)."""
    if label not in KEYS or not (KEYS[label].label or KEYS[label].gated):
        raise KeyError(f"{label!r} is not a label key; labels are {', '.join(LABELS)}")
    return f"{label}_weight"


for _label in WEIGHTED:
    KEYS[f"{_label}_weight"] = KeySpec(
        f"{_label}_weight", "frame", (3,) if _label == DIPOLE else (), "float", "-",
        f"weight of {_label} per frame (0 = label missing)",
    )


def level_of(key: str) -> str:
    """'atom', 'edge' or 'frame' for a known key; raises KeyError naming the key otherwise."""
    try:
        return KEYS[key].level
    except KeyError:
        raise KeyError(f"unknown batch key {key!r}") from None
