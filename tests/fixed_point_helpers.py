"""Small models and batches shared by the fixed-point tests (not a test module)."""

from __future__ import annotations

import torch

from mlpot.data import keys as K
from mlpot.models.registry import build_model
from mlpot.testing import random_batch

F64 = torch.float64


def cluster_batch(sizes=(6, 5), seed=0, charges=(1.0, -1.0), fermi=(-0.3, 0.2), field=True, periodic=False, box=6.0):
    """Random clusters (or periodic cells) with total charges, Fermi levels and applied fields."""
    batch = random_batch(len(sizes), list(sizes), 2, cutoff=3.0, box=box, periodic=periodic, triclinic=periodic, seed=seed)
    n = len(sizes)
    batch[K.TOTAL_CHARGE] = torch.tensor(list(charges)[:n], dtype=F64)
    batch[K.weight_key(K.TOTAL_CHARGE)] = torch.ones(n, dtype=F64)
    batch[K.FERMI_LEVEL] = torch.tensor(list(fermi)[:n], dtype=F64)
    batch[K.weight_key(K.FERMI_LEVEL)] = torch.ones(n, dtype=F64)
    if field:
        batch[K.EXTERNAL_FIELD] = torch.tensor([[0.01, 0.0, -0.02], [0.0, 0.03, 0.0]][:n], dtype=F64)
    return batch


def species_section(**overrides):
    section = {"type": "fixed_point", "backbone": {"type": "species", "type_map": ["T0", "T1"], "cutoff": 3.0},
               "fermi_level_offset": 0.0, "electrostatic_pbc_method": "auto", "hidden_channels": 4}
    section.update(overrides)
    return section


def physical(model, scale: float = 0.02):
    """Make the one-body response dq/d(V + mu) negative for every atom (a convergent, physical SCF)."""
    with torch.no_grad():
        update = model.update
        update.embedding.field.weight.abs_()
        update.product_weights.abs_()
        update.out.weight[:, 0].copy_(-scale * update.out.weight[:, 0].abs())
    return model


def fixed_point_model(**overrides):
    torch.manual_seed(0)
    return physical(build_model(species_section(**overrides)))


def scf_options(mode, constant_charge, steps=300, tolerance=1e-13, mixing=0.5):
    if mode == "direct":
        return {"mode": "direct"}
    return {"mode": mode, "scf": {"num_scf_steps": steps, "mixing_parameter": mixing, "constant_charge": constant_charge,
                                  "scf_tolerance": tolerance}}
