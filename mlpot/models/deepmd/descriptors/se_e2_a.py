"""se_e2_a (alias se_a, "DeepPot-SE") descriptor, spec deepmd.md §2.3.

A_i = (1/N_c) sum_k R~_ik^T G_ik (4 x M1), G_ik = N_t(s~_ik) the embedding of the first column of
the normalised environment matrix; D_i = A_i^T A_i[:, :M2] (M1 x M2) flattened row-major as in
DeePMD-kit (index m1 * M2 + m2). N_c = sum(sel) and padded slots take part [COMPAT].

Speed: embedding nets are evaluated once per neighbour-type section (type_one_side) or per
(centre type, neighbour type) pair on dense padded blocks, and the contraction R~^T G is one
batched matmul per block — no scatter over edges. Forces without a graph of them (evaluation,
MD: ``first_derivatives_only``) take the row path: each net runs once per distinct input, its
value and its slope dG/ds~ in one forward-mode pass, and the contraction has a hand-written
backward (``mlpot.nn.gathered_contraction``); training keeps autograd (second derivatives).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from mlpot.data.keys import ATOM_TYPES, EDGE_INDEX, EDGE_SHIFTS
from mlpot.models.deepmd.keys import SE_A_EBD_V2, SE_E2_A, TYPE_EMBEDDING_KEYS, resolve_precision, resolve_sel
from mlpot.models.sections import read_section
from mlpot.models.deepmd.descriptors.base import DESCRIPTORS, EnvMatrixDescriptor
from mlpot.errors import ConfigError
from mlpot.models.deepmd.descriptors.env import undirected_pair_key
from mlpot.models.deepmd.type_embedding import TypeEmbedding
from mlpot.nn import EmbeddingNet, gather_rows, is_tracing
from mlpot.nn.gathered_contraction import gathered_contraction, only_first_derivatives

__all__ = ["DescriptorSeA", "DescriptorSeAEbdV2"]

class DescriptorSeA(EnvMatrixDescriptor):
    """se_e2_a descriptor.

    forward(batch, vectors (n_edges, 3) Å) -> (D (n_atoms, M1*M2), rot (n_atoms, M1, 3)), where
    rot = A_i[1:4]^T is the equivariant block (units of the normalised env matrix).
    """

    def __init__(
        self,
        n_types: int,
        sel,
        rcut: float = 6.0,
        rcut_smth: float = 0.5,
        neuron=(10, 20, 40),
        axis_neuron: int = 4,
        activation_function: str = "tanh",
        resnet_dt: bool = False,
        type_one_side: bool = False,
        trainable: bool = True,
        seed: Optional[int] = None,
        exclude_types=(),
        env_protection: float = 0.0,
        set_davg_zero: bool = False,
        dtype: torch.dtype = torch.float64,
        config: Optional[Dict[str, Any]] = None,
        type_embedding: Optional[Dict[str, Any]] = None,
        tebd_input_mode: str = "concat",
    ):
        super().__init__()
        self._init_env(n_types, rcut, rcut_smth, sel, env_protection, set_davg_zero, exclude_types, dtype)
        self.neuron = [int(n) for n in neuron]
        self.m1, self.m2 = self.neuron[-1], int(axis_neuron)
        if self.m2 > self.m1:
            raise ConfigError(f"axis_neuron ({self.m2}) must not exceed neuron[-1] ({self.m1})", key="model/descriptor/axis_neuron")
        self.type_one_side = bool(type_one_side)
        # evaluate nets on occupied slots only (exact); False = DeePMD-kit's dense way, for checks
        self.skip_padding = True
        n_nets = n_types if self.type_one_side else n_types * n_types
        in_dim = 1
        self.type_embedding = None
        self.tebd_input_mode, self.type_pair_embedding = tebd_input_mode, None
        if type_embedding is not None:
            # TF-style model/type_embedding: one embedding net for all type pairs and one fitting net
            self.type_embedding = TypeEmbedding(n_types, dtype=dtype, **type_embedding)
            tebd_width = self.type_embedding.dim_out * (1 if self.type_one_side else 2)
            n_nets, in_dim = 1, 1 + tebd_width
            if tebd_input_mode == "strip":  # se_a_ebd_v2: N_s(s~) (1 + N_t(type embeddings))
                in_dim = 1
                self.type_pair_embedding = EmbeddingNet(
                    tebd_width, self.neuron, activation=activation_function, resnet_dt=resnet_dt, trainable=trainable,
                    dtype=dtype, seed=None if seed is None else int(seed) + 1)
            self.mixed_types = True  # tells the fitting to build one shared net
        self.embeddings = torch.nn.ModuleList(
            EmbeddingNet(
                in_dim, self.neuron, activation=activation_function, resnet_dt=resnet_dt, trainable=trainable, dtype=dtype,
                seed=None if seed is None else int(seed) + index,
            )
            for index in range(n_nets)
        )
        self.dim_out = self.m1 * self.m2 + (self.type_embedding.dim_out if self.type_embedding is not None else 0)
        self.dim_rot = self.m1
        self.config = dict(config or {})
        self.tables = None  # compressed: one QuinticTable per neighbour type (mlpot.models.deepmd.compression)

    KEYS = SE_E2_A  # the key table of the section
    STRIP = False  # se_a_ebd_v2: always a type embedding, in strip mode

    @classmethod
    def from_config(cls, section: Dict[str, Any], n_types: int, dtype: torch.dtype, path: str = "model/descriptor",
                    type_embedding: Optional[Dict[str, Any]] = None):
        """``type_embedding``: the TF-style ``model/type_embedding`` section (se_e2_a, se_a_ebd_v2)."""
        values = read_section(section, path, cls.KEYS, f"{cls.__name__}Section")
        values.pop("type")
        if cls.STRIP:
            values["tebd_input_mode"] = "strip"
            if type_embedding is None:  # DeePMD-kit's TF default for it: one linear layer of width 8, no bias
                type_embedding = {"neuron": [8], "activation_function": "linear"}
        dtype = resolve_precision(values.pop("precision"), dtype, path)
        values["sel"] = resolve_sel(values["sel"], n_types, path)
        if type_embedding is not None:
            tebd = read_section(type_embedding, "model/type_embedding", TYPE_EMBEDDING_KEYS, "TypeEmbeddingSection")
            tebd_dtype = resolve_precision(tebd.pop("precision"), dtype, "model/type_embedding")
            if tebd_dtype != dtype:
                raise ConfigError("the type embedding must have the descriptor's precision",
                                  key="model/type_embedding/precision")
            values["type_embedding"] = tebd
        return cls(n_types, dtype=dtype, config=dict(section), **values)

    def _net_index(self, ti: int, tj: int) -> int:
        return tj if self.type_one_side else ti * self.n_types + tj

    def _embedding_net(self, ti: int, tj: int, tebd: Optional[torch.Tensor], padded: bool = False):
        """The embedding of s~ for centre type ti and neighbour type tj: (rows, 1) -> (rows, M1).

        With a type embedding ``tebd`` (n_types + 1, tebd_dim; last row 0), ``concat`` mode: the
        shared net reads [s~, tebd(tj)] (type_one_side) or [s~, tebd(tj), tebd(ti)], and padded
        slots of section tj keep the section's type, as DeePMD-kit's TF se_a with type embedding
        does; ``strip`` mode (se_a_ebd_v2): N_s(s~) (1 + N_t(tebd(tj) [, tebd(ti)])), where padded
        slots (``padded``) take the zero padding row, as there.
        """
        if tebd is None:
            return self.embeddings[self._net_index(ti, tj)]
        shared = self.embeddings[0]
        if self.type_pair_embedding is not None:
            tj = self.n_types if padded else tj
        types_part = tebd[tj] if self.type_one_side else torch.cat([tebd[tj], tebd[ti]])
        if self.type_pair_embedding is not None:
            scale = 1.0 + self.type_pair_embedding(types_part.unsqueeze(0))  # (1, M1)
            return lambda s: shared(s) * scale
        return lambda s: shared(torch.cat([s, types_part.expand(s.shape[0], -1)], dim=-1))

    def embedding_contraction(self, env: torch.Tensor, nlist: torch.Tensor, types: torch.Tensor,
                              weights: Optional[torch.Tensor] = None, pad_weight: Optional[torch.Tensor] = None,
                              pair_key: Optional[torch.Tensor] = None,
                              bounds: Optional[List[Tuple[int, int]]] = None,
                              tebd: Optional[torch.Tensor] = None) -> torch.Tensor:
        """sum_k R~_ik^T G_ik over all N_c slots, (n_atoms, width, M1), for env (n_atoms, n_slots, width).

        Exact reformulation for speed: the nets run only on occupied slots; every padded slot of a
        centre of type t_i holds the same row ((0 - mu_r)/sigma_r, 0, 0, 0), so the padded slots
        contribute n_pad · row_pad^T G(row_pad[0]), with G evaluated once per type pair.
        ``bounds`` are the column ranges of the type sections in env/nlist (default: the full
        sel sections); with ``compact_environment`` they hold only the occupied prefix columns and
        the rest of each section of width sel[t] counts as padding.
        ``weights`` (n_atoms, n_slots, width) replace R~ as the left factor (se_e2_r sums G with
        weight 1); ``pad_weight`` (n_atoms, width) is then their value on padded slots.
        ``pair_key`` (n_edges,), from ``undirected_pair_key``: same-type pairs share one evaluation
        (the two directions of a pair have the same s~ and the same net), ~30% less work on water.
        ``tebd``: the type-embedding table when the model has one (see ``_embedding_net``).
        """
        bounds = self.section_bounds if bounds is None else bounds
        if weights is None:
            weights = env
            pad_weight = -self.davg[types, : env.shape[-1]] / self.dstd[types, : env.shape[-1]]
        # (the row path needs at least one occupied column: its placeholder row reads slot 0)
        if pair_key is not None and tebd is None and env.shape[1] > 0 and self._first_derivatives_only():
            return self._row_contraction(env, weights, pad_weight, nlist, types, pair_key, bounds)
        if self.tables is not None:
            return self._tabulated_contraction(env, weights, pad_weight, types, bounds)
        n_atoms, _, width = weights.shape
        occupied = nlist >= 0
        if not self.skip_padding:  # DeePMD-kit's dense evaluation over all N_c slots (reference)
            occupied = torch.ones_like(occupied)
            pair_key = None
        out = env.new_zeros(n_atoms, width, self.m1)
        pad_row = pad_weight.to(env.dtype)  # (n_atoms, width)
        pad_inputs = (-self.davg[:, :1] / self.dstd[:, :1]).to(env.dtype)  # (n_types, 1)
        centre_types = range(1) if self.type_one_side else range(self.n_types)
        two = torch.zeros(2, dtype=torch.long, device=env.device)
        for tj, (start, stop) in enumerate(bounds):
            mask, left = occupied[:, start:stop], weights[:, start:stop]
            radial = env[:, start:stop, 0].reshape(-1)  # s~ of every slot of the section, flat
            # every group of rows below gets two extra rows (slot 0's input, written to a spare row
            # that is cut off): its size, known only from the data, is then at least 2, so a graph
            # tracer (mlpot compile) needs no guard on it in the backward's broadcasting checks
            spare = n_atoms * (stop - start)
            pieces, positions = [], []  # net values of occupied slots, and their flat slot index
            pad_embedded = env.new_zeros(n_atoms, self.m1)
            for ti in centre_types:
                net = self._embedding_net(ti, tj, tebd)
                select = mask if self.type_one_side else mask & (types == ti).unsqueeze(1)
                if stop > start and pair_key is not None and (self.type_one_side or ti == tj):
                    # same-type pairs (i, j), (j, i) have equal inputs and nets: evaluate once per pair
                    same = select & (types == tj).unsqueeze(1)
                    select = select & ~same
                    same_slots = torch.nonzero(same.reshape(-1)).squeeze(1)
                    same_edges = nlist[:, start:stop].reshape(-1).index_select(0, same_slots)
                    unique, inverse = torch.unique(pair_key.index_select(0, same_edges), return_inverse=True)
                    first = torch.full(unique.shape, same_slots.shape[0], dtype=torch.long, device=env.device)
                    first = first.scatter_reduce(0, inverse, torch.arange(same_slots.shape[0], device=env.device), "amin")
                    # gather_rows, not advanced indexing, for every gather here (see its docstring)
                    inputs = gather_rows(radial, torch.cat([same_slots.index_select(0, first), two])).unsqueeze(1)
                    pieces.append(gather_rows(net(inputs), torch.cat([inverse, two])))
                    positions.append(torch.cat([same_slots, two + spare]))
                if stop > start:
                    select_slots = torch.nonzero(select.reshape(-1)).squeeze(1)
                    pieces.append(net(gather_rows(radial, torch.cat([select_slots, two])).unsqueeze(1)))
                    positions.append(torch.cat([select_slots, two + spare]))
                # padded slots: one net evaluation per centre type
                pad_net = self._embedding_net(ti, tj, tebd, padded=True) if self.type_pair_embedding is not None else net
                pad_values = gather_rows(pad_net(pad_inputs), types)  # (n_atoms, M1)
                pad_embedded = pad_values if self.type_one_side else torch.where((types == ti).unsqueeze(1), pad_values, pad_embedded)
            if stop > start:
                # one in-place scatter into a fresh zero block (out of place would copy the dense
                # block); index_copy_, whose backward is a gather, not index_put (see nn.gather_rows)
                embedded = env.new_zeros(spare + 1, self.m1)
                embedded.index_copy_(0, torch.cat(positions), torch.cat(pieces))
                out = out + torch.matmul(left.transpose(1, 2), embedded[:spare].view(n_atoms, stop - start, self.m1))
            n_pad = (self.sel[tj] - mask.sum(1)).to(env.dtype)  # (n_atoms,) padded slots of the full section
            out = out + (n_pad.unsqueeze(1) * pad_row).unsqueeze(2) * pad_embedded.unsqueeze(1)
        return out

    def _first_derivatives_only(self) -> bool:
        """Where the hand-written first-derivative path applies: inside ``first_derivatives_only``
        (forces or virials without a graph of them: evaluation, MD), eager (a graph tracer keeps
        the autograd path), plain se_e2_a nets in full precision (no type embedding of any kind,
        padding skipped), not compressed:
        tables keep their own fused contraction (``QuinticTable.contract``), which costs less per
        slot than the row path's gathers (measured on water)."""
        return (only_first_derivatives() and not is_tracing() and self.tables is None and self.skip_padding
                and self.type_embedding is None and type(self)._embedding_net is DescriptorSeA._embedding_net
                and all(net.compute_dtype is None for net in self.embeddings))

    def _section_rows(self, occupied, edges, types, tj, pair_key):
        """The distinct net inputs of section tj: (row_slots (n_rows + 1,) flat slot of each row's input,
        slot_rows (n_atoms * k,) row of every slot, row_types (n_rows + 1,) centre type), rows grouped
        by centre type; the last row is the placeholder of the empty slots (slot_rows n_rows). Same-type pairs (i, j), (j, i) share a row (equal s~ and net)."""
        flat = occupied.reshape(-1)
        centre = types.unsqueeze(1).expand(occupied.shape).reshape(-1)
        same = flat & (centre == tj)
        same_slots, other_slots = torch.nonzero(same).squeeze(1), torch.nonzero(flat & ~same).squeeze(1)
        unique, inverse = torch.unique(pair_key.index_select(0, edges.reshape(-1).index_select(0, same_slots)),
                                       return_inverse=True)
        first = torch.full(unique.shape, flat.shape[0], dtype=torch.long, device=flat.device)
        first = first.scatter_reduce(0, inverse, torch.arange(same_slots.shape[0], device=flat.device), "amin")
        row_slots = torch.cat([same_slots.index_select(0, first), other_slots])
        n_rows, n_same = row_slots.shape[0], unique.shape[0]
        slot_rows = torch.full_like(flat, n_rows, dtype=torch.long)
        slot_rows[same_slots] = inverse
        slot_rows[other_slots] = torch.arange(n_same, n_rows, device=flat.device)
        row_types = centre.index_select(0, row_slots)
        if not self.type_one_side:  # one net per centre type: contiguous groups of rows
            order = torch.argsort(row_types, stable=True)
            position = torch.empty(n_rows + 1, dtype=torch.long, device=flat.device)
            position[torch.cat([order, order.new_tensor([n_rows])])] = torch.arange(n_rows + 1, device=flat.device)
            row_slots, row_types, slot_rows = row_slots[order], row_types[order], position[slot_rows]
        # the placeholder row of the empty slots (input: slot 0's, last group's net): see gathered_contraction
        row_slots = torch.cat([row_slots, row_slots.new_zeros(1)])
        return row_slots, slot_rows, torch.cat([row_types, row_types.new_full((1,), self.n_types - 1)])

    def _row_evaluator(self, tj: int, row_types: torch.Tensor):
        """(x (n,), values (n, M1), slopes (n, M1)) -> None: G and dG/dx at the inputs x written into
        values and slopes, by the net(s) of section tj: one net, or one per centre type on the
        contiguous groups of ``row_types`` (n,)."""
        if self.type_one_side:
            net = self.embeddings[tj]
            return lambda x, values, slopes: net.value_and_slope(x.unsqueeze(1), out=(values, slopes))
        counts = torch.bincount(row_types, minlength=self.n_types).tolist()

        def evaluate(x, values, slopes):
            start = 0
            for ti, count in enumerate(counts):
                if count:
                    part = slice(start, start + count)
                    self.embeddings[self._net_index(ti, tj)].value_and_slope(x[part].unsqueeze(1),
                                                                             out=(values[part], slopes[part]))
                start += count
        return evaluate

    def _layout_rows(self, nlist, types, pair_key, bounds):
        """The distinct net inputs of all sections (``_section_rows``), for one contraction over all
        columns of nlist (n_atoms, n_cols): (row_slots (n_rows + 1,) flat slot of each row's input,
        slot_rows (n_atoms * n_cols,) row of every slot, evaluate: x (n_rows + 1,) -> (G, dG/dx)),
        rows grouped by section; the last row is the placeholder of all empty slots."""
        n_atoms, n_cols = nlist.shape
        slot_rows = torch.empty(n_atoms, n_cols, dtype=torch.long, device=nlist.device)
        row_slots, parts, offset = [], [], 0
        for tj, (start, stop) in enumerate(bounds):
            if stop == start:
                continue
            width = stop - start
            slots, rows, row_types = self._section_rows(nlist[:, start:stop] >= 0, nlist[:, start:stop], types, tj,
                                                        pair_key)
            n_rows = slots.shape[0] - 1  # without the section's placeholder
            row_slots.append(torch.div(slots[:-1], width, rounding_mode="floor") * n_cols + start + slots[:-1] % width)
            slot_rows[:, start:stop] = torch.where(rows == n_rows, -1, rows + offset).view(n_atoms, width)
            parts.append((offset, offset + n_rows, self._row_evaluator(tj, row_types[:-1])))
            offset += n_rows
        slot_rows = torch.where(slot_rows < 0, offset, slot_rows).view(-1)
        row_slots = torch.cat(row_slots + [slot_rows.new_zeros(1)])  # the placeholder reads slot 0

        def evaluate(x):
            values, slopes = x.new_empty(2, x.shape[0], self.m1).unbind(0)  # one allocation (see gathered_contraction)
            for first, last, section in parts:  # the placeholder row is zeroed by gathered_contraction
                section(x[first:last], values[first:last], slopes[first:last])
            return values, slopes
        return row_slots, slot_rows, evaluate

    def _row_contraction(self, env, weights, pad_weight, nlist, types, pair_key, bounds) -> torch.Tensor:
        """``embedding_contraction`` for inference (``_first_derivatives_only``): the nets on the
        distinct inputs of all sections (``_layout_rows``), values and slopes in one pass, and one
        contraction over all columns with a hand-written backward (``mlpot.nn.gathered_contraction``);
        every padded slot of the full sections in closed form. First derivatives only."""
        with torch.no_grad():
            row_slots, slot_rows, evaluate = self._layout_rows(nlist, types, pair_key, bounds)
        x = gather_rows(env.reshape(-1), row_slots * env.shape[-1])  # s~: column 0 of the rows of env
        out = gathered_contraction(x, weights, slot_rows, evaluate)
        pad_inputs = (-self.davg[:, 0] / self.dstd[:, 0]).to(env.dtype)  # (n_types,)
        pad_row = pad_weight.to(env.dtype)
        for tj, (start, stop) in enumerate(bounds):
            with torch.no_grad():  # G at the padding input, per centre type
                pad_values = env.new_empty(self.n_types, self.m1)
                self._row_evaluator(tj, torch.arange(self.n_types, device=env.device))(
                    pad_inputs, pad_values, torch.empty_like(pad_values))
                pad_embedded = gather_rows(pad_values, types)  # (n_atoms, M1)
            n_pad = (self.sel[tj] - (nlist[:, start:stop] >= 0).sum(1)).to(env.dtype)
            out = out + (n_pad.unsqueeze(1) * pad_row).unsqueeze(2) * pad_embedded.unsqueeze(1)
        return out

    def _tabulated_contraction(self, env, weights, pad_weight, types, bounds) -> torch.Tensor:
        """``embedding_contraction`` of a compressed descriptor: each section's table fused with the
        contraction over its columns (``QuinticTable.contract``; the padded slots among them hold the
        padding row and take part), the section's remaining sel[t] - columns padded slots in closed
        form. Without type_one_side the table's variant is the centre type."""
        out = env.new_zeros(weights.shape[0], weights.shape[2], self.m1)
        variant = None if self.type_one_side else types
        pad_inputs = (-self.davg[:, :1] / self.dstd[:, :1]).to(env.dtype)  # (n_types, 1)
        all_types = None if self.type_one_side else torch.arange(self.n_types, device=env.device)
        for tj, (start, stop) in enumerate(bounds):
            table = self.tables[tj]
            if stop > start:
                out = out + table.contract(env[:, start:stop, 0], weights[:, start:stop], variant)
            n_pad = self.sel[tj] - (stop - start)
            if n_pad:
                pad_embedded = gather_rows(table(pad_inputs, all_types), types)  # (n_atoms, M1)
                out = out + (n_pad * pad_weight.to(env.dtype)).unsqueeze(2) * pad_embedded.unsqueeze(1)
        return out

    def forward(self, batch: Dict[str, torch.Tensor], vectors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.skip_padding:
            env, nlist, bounds = self.compact_environment(batch, vectors)
        else:
            (env, nlist), bounds = self.normalized_environment(batch, vectors), None
        pair_key = self._pair_key(batch)
        types = batch[ATOM_TYPES]
        tebd = self._type_table()
        a_matrix = self.embedding_contraction(env, nlist, types, pair_key=pair_key, bounds=bounds, tebd=tebd) / self.n_slots  # (n_atoms, 4, M1)
        descriptor = torch.matmul(a_matrix.transpose(1, 2), a_matrix[:, :, : self.m2])  # (n_atoms, M1, M2)
        rot = a_matrix[:, 1:4, :].transpose(1, 2)  # (n_atoms, M1, 3)
        descriptor = descriptor.reshape(descriptor.shape[0], -1)
        if self.type_embedding is not None:  # the fitting net reads the centre's type embedding too
            descriptor = torch.cat([descriptor, tebd[types]], dim=-1)
        return descriptor, rot

    def _pair_key(self, batch: Dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
        """``undirected_pair_key`` of the edges (finds equal net inputs), or None when compressed: the
        tables' contraction needs none."""
        return undirected_pair_key(batch[EDGE_INDEX], batch[EDGE_SHIFTS]) if self.tables is None else None

    def _type_table(self) -> Optional[torch.Tensor]:
        """The per-type vectors handed to ``_embedding_net`` (the type embedding's table), or None."""
        return self.type_embedding.table() if self.type_embedding is not None else None




class DescriptorSeAEbdV2(DescriptorSeA):
    """se_a_ebd_v2 (alias se_a_tpe_v2, DeePMD-kit TF backend): se_e2_a with a type embedding in
    ``strip`` mode, G_ij = N_s(s~_ij) (1 + N_t(tebd(t_j) [, tebd(t_i)])), one fitting net reading
    tebd(t_i) too. The type embedding is ``model/type_embedding`` when given, else one linear layer
    of width 8 without bias (DeePMD-kit's default there). The keys are se_e2_a's."""

    KEYS = SE_A_EBD_V2
    STRIP = True
