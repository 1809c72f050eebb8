"""DPA-2 descriptor (Zhang et al., npj Comput Mater 10, 293 (2024); DeePMD-kit 3.x ``type: dpa2``).

Blocks, each with its own cutoff, neighbour list (nearest ``nsel`` of any type) and env statistics:

1. type embedding tebd(t) (``tebd_dim``, one linear layer of the one-hot type, as in se_atten);
2. ``repinit``: an se_atten block without attention layers (``descriptors/se_atten.py``:
   ``tebd_input_mode`` concat/strip, ``type_one_side``, smooth strip with ``smooth``), giving the
   flattened G^T R~ R~^T G< (neuron[-1] x axis_neuron) per atom; with ``use_three_body`` the
   three-body block (``descriptors/three_body.py``) output is appended;
3. a linear map (no bias; none when the widths already agree) to g1_dim, plus a linear map of
   tebd(t_i) with ``add_tebd_to_repinit_out``;
4. ``repformer``: the message-passing stack (``descriptors/repformer.py``).

Output: g1 (n_atoms, g1_dim) [+ tebd(t_i) with ``concat_output_tebd``] and the rotation matrix
(n_atoms, g2_dim, 3) for tensor fittings. The model's cutoff is repinit's rcut (the largest:
the repformer and three-body cutoffs must not exceed it). The receptive field is repinit/rcut +
nlayers x repformer/rcut: the repformer layers read g1 of neighbours, which mlpot takes from the
same atoms of the frame (periodic images share their atom's g1).

Deviation from DeePMD-kit (se_atten's, see there): an empty repinit slot takes the zero type
embedding, DeePMD-kit the type of the frame's first atom. The results differ only when repinit's
padded rows are non-zero (``set_davg_zero`` false) and the padded embedding is not switched off
(concat, or strip without ``smooth``); giving padded slots that type reproduces such a DeePMD-kit
file to 1e-11 eV (checked on a 4-step water model).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from mlpot.data.keys import ATOM_TYPES
from mlpot.models.deepmd.descriptors.base import Descriptor
from mlpot.models.deepmd.descriptors.repformer import RepformerBlock
from mlpot.models.deepmd.descriptors.se_atten import DescriptorSeAtten
from mlpot.models.deepmd.descriptors.three_body import ThreeBodyBlock
from mlpot.models.deepmd.keys import resolve_precision
from mlpot.models.deepmd.keys_dpa2 import read_dpa2_section
from mlpot.models.deepmd.type_embedding import TypeEmbedding
from mlpot.nn import MLPLayer, gather_rows

__all__ = ["DescriptorDPA2"]


class DescriptorDPA2(Descriptor):
    """DPA-2 (module docstring). forward(batch, vectors (n_edges, 3) Å) -> (D (n_atoms, dim_out),
    rot (n_atoms, g2_dim, 3)). ``sel`` is [repinit nsel] (the neighbour list of the model's cutoff)."""

    mixed_types = True

    def __init__(self, n_types: int, values: Dict[str, Any], *, dtype: torch.dtype = torch.float64,
                 config: Optional[Dict[str, Any]] = None, path: str = "model/descriptor"):
        super().__init__()
        ri, rf = values["repinit"], dict(values["repformer"], smooth=values["smooth"])
        seed = values["seed"]
        trainable, exclude, protection = values["trainable"], values["exclude_types"], values["env_protection"]
        self.n_types = int(n_types)
        tebd_dim = int(ri["tebd_dim"])
        self.type_embedding = TypeEmbedding(n_types, [tebd_dim], activation_function="linear",
                                            use_tebd_bias=values["use_tebd_bias"], use_econf_tebd=values["use_econf_tebd"],
                                            trainable=trainable,
                                            seed=None if seed is None else seed + 2, dtype=dtype)
        self.repinit = DescriptorSeAtten(
            n_types, ri["nsel"], rcut=ri["rcut"], rcut_smth=ri["rcut_smth"], neuron=ri["neuron"],
            axis_neuron=ri["axis_neuron"], activation_function=ri["activation_function"], resnet_dt=ri["resnet_dt"],
            type_one_side=ri["type_one_side"], trainable=trainable, seed=seed, exclude_types=exclude,
            env_protection=protection, set_davg_zero=ri["set_davg_zero"], tebd_dim=tebd_dim,
            tebd_input_mode=ri["tebd_input_mode"], attn_layer=0, concat_output_tebd=False,
            smooth_type_embedding=values["smooth"], dtype=dtype, path=f"{path}/repinit", own_type_embedding=False)
        width = self.repinit.m1 * self.repinit.m2
        self.three_body = None
        if ri["use_three_body"]:
            self.three_body = ThreeBodyBlock(
                n_types, ri["three_body_rcut"], ri["three_body_rcut_smth"], ri["three_body_sel"], ri["three_body_neuron"],
                tebd_dim, tebd_input_mode=ri["tebd_input_mode"], set_davg_zero=ri["set_davg_zero"],
                activation_function=ri["activation_function"], resnet_dt=ri["resnet_dt"], smooth=values["smooth"],
                exclude_types=exclude, env_protection=protection, trainable=trainable,
                seed=None if seed is None else seed + 5, dtype=dtype)
            width += self.three_body.dim_out
        generator = None if seed is None else torch.Generator().manual_seed(int(seed) + 3)
        g1_dim = int(rf["g1_dim"])
        net = dict(bias=False, trainable=trainable, dtype=dtype, generator=generator)
        self.g1_shape_transform = MLPLayer(width, g1_dim, None, **net) if width != g1_dim else None
        self.tebd_transform = MLPLayer(tebd_dim, g1_dim, None, **net) if values["add_tebd_to_repinit_out"] else None
        self.repformers = RepformerBlock(n_types, rf, exclude_types=exclude, env_protection=protection, dtype=dtype,
                                         trainable=trainable, generator=generator, path=f"{path}/repformer")
        # three-body and repformer with one cutoff, sel and no exclusions (input_torch_small) read one
        # environment matrix
        self.share_environment = self.three_body is not None and not self.repformers.has_excluded_pairs and all(
            getattr(self.three_body, key) == getattr(self.repformers, key) for key in ("rcut", "rcut_smth", "sel"))
        self.rcut, self.rcut_smth, self.sel = self.repinit.rcut, self.repinit.rcut_smth, list(self.repinit.sel)
        self.concat_output_tebd = bool(values["concat_output_tebd"])
        self.dim_out = g1_dim + (tebd_dim if self.concat_output_tebd else 0)
        self.dim_rot = self.repformers.g2_dim
        self.config = dict(config or {})

    @classmethod
    def from_config(cls, section: Dict[str, Any], n_types: int, dtype: torch.dtype, path: str = "model/descriptor"):
        values = read_dpa2_section(section, path)
        return cls(n_types, values, dtype=resolve_precision(values["precision"], dtype, path), config=dict(section),
                   path=path)

    def _blocks(self):
        blocks = {"repinit": self.repinit, "repformer": self.repformers}
        if self.three_body is not None:
            blocks["three_body"] = self.three_body
        return blocks

    def compute_statistics(self, samples, protection: float = 1e-2) -> Dict[str, Any]:
        """davg/dstd of every block from (batch, edge vectors) samples, each with its own neighbour list."""
        samples = list(samples)
        return {name: block.compute_statistics(samples, protection) for name, block in self._blocks().items()}

    def forward(self, batch: Dict[str, torch.Tensor], vectors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        types = batch[ATOM_TYPES]
        table = self.type_embedding.table()
        env, mask, sw, neighbor_types = self.repinit.mixed_environment(batch, vectors)
        g1, _ = self.repinit._atom_rows(env, mask, sw, neighbor_types, types, table)
        raw = None
        if self.three_body is not None:
            raw = self.three_body.raw_environment(batch, vectors)
            g1 = torch.cat([g1, self.three_body(batch, vectors, table, raw)], dim=-1)
        if self.g1_shape_transform is not None:
            g1 = self.g1_shape_transform(g1)
        tebd = gather_rows(table, types)
        if self.tebd_transform is not None:
            g1 = g1 + self.tebd_transform(tebd)
        g1, rot = self.repformers(batch, vectors, g1, raw if self.share_environment else None)
        if self.concat_output_tebd:
            g1 = torch.cat([g1, tebd], dim=-1)
        return g1, rot
