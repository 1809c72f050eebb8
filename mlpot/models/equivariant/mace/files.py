"""mace-torch's trained models as mlpot MACE models: the ``.model`` file and the training checkpoint.

* ``load_mace_model_file(path, dtype)``: a ``.model`` (``torch.save`` of the whole module), read by
  :mod:`mlpot.models.safe_pickle`'s restricted unpickler with the allow-list ``MACE_MODEL_FILE``
  (mace, e3nn and a few torch module classes become inert records; no mace code is imported or run;
  e3nn's generated-code archives are read for their tensors only). Every
  hyperparameter comes from the pickled module tree (``section_from_model_tree``).
* ``load_mace_checkpoint(path, options, dtype)``: a ``mace_run_train`` checkpoint
  (``{"model": state_dict, ...}``, read with ``torch.load(weights_only=True)``) and the options it was
  trained with. Values computed from data are read from the state dict (element table, E0s, scale
  and shift); ``avg_num_neighbors``, a plain attribute, is taken from the argument, the options
  (``avg_num_neighbors`` with ``compute_avg_num_neighbors: false``, or a ``statistics_file``) or
  recomputed as mace-torch does from its training split of ``train_file``.

Parameter names. mlpot's modules keep mace-torch's names, so most keys load as they are; the
exceptions are explicit in ``load_mace_state``:

| mace-torch key | mlpot |
|---|---|
| radial_embedding.bessel_fn.bessel_weights / gaussian_weights | radial_embedding.basis.weights / centres |
| radial_embedding.distance_transform.{q,p,a,alpha} | radial_embedding.transform.{q,p,a,alpha} |
| ....covalent_radii (ASE table, 119) | the rows of the model's elements (transform / pair_repulsion_fn radii) |
| interactions.t.conv_tp._compiled_main_left_right._w3j_{l1}_{l2}_{l3} | 3j symbols of those paths in interactions.t.conv_tp.coupling (e3nn 0.4.4's sign convention) |
| radial/cutoff r_max, prefactor, p, chebyshev n, pair_repulsion_fn.p | checked against the hyperparameters |
| *.output_mask, empty *.bias, empty conv_tp.weight, weights_*_zeroed | e3nn/mace bookkeeping, not loaded (checked empty / consistent) |

e3nn 0.4.4 (mace-torch) and e3nn 0.6 (mlpot) store ``o3.Linear``, ``FullyConnectedTensorProduct``
and ``FullyConnectedNet`` weights in the same flat layout (pinned by tests), so weights load
unchanged; U tensors of the symmetric contraction are loaded from the file (shape included).
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from e3nn import o3

from mlpot.errors import CheckpointError, ConfigError
from mlpot.models.equivariant.mace.model import MACE
from mlpot.models.equivariant.mace.section import build_mace
from mlpot.models.safe_pickle import AllowList, PickledObject, archive_root, load_archive_pickle, module_state, open_archive

__all__ = ["load_mace_model_file", "load_mace_checkpoint", "load_mace_state", "section_from_model_tree",
           "section_from_run_train_options", "is_mace_model_file", "is_mace_checkpoint", "read_pickled_module",
           "MACE_MODEL_FILE"]

# what a mace-torch .model may name: mace and e3nn classes (``__torch__``: TorchScript's names inside
# e3nn's generated-code archives), torch containers, activations and torch.fx's module records
MACE_MODEL_FILE = AllowList(
    packages=("mace", "e3nn", "__torch__"),
    modules={"torch.nn.modules.container": None, "torch.nn.modules.module": None, "torch.nn.modules.linear": None,
             "torch.nn.modules.activation": None, "torch.fx.graph_module": frozenset({"reduce_graph_module", "GraphModule"}),
             "torch.nn.functional": frozenset({"silu", "tanh", "relu", "gelu", "softplus", "sigmoid"}),
             "torch": frozenset({"tanh", "abs", "sigmoid", "relu"})},
    holds="a mace-torch model file holds only mace, e3nn and torch module classes (the file may be corrupted or malicious)")

_DROPPED = re.compile(r"(.*\.output_mask|.*\.bias|.*conv_tp\.weight|.*\.weights_(\d+|max)_zeroed)$")
_CHECKED = re.compile(r"(radial_embedding\.(bessel_fn\.(r_max|prefactor|n)|cutoff_fn\.(p|r_max))|pair_repulsion_fn\.p"
                      r"|atomic_numbers|r_max|num_interactions)$")
_RENAMED = [(re.compile(r"radial_embedding\.bessel_fn\.bessel_weights$"), "radial_embedding.basis.weights"),
            (re.compile(r"radial_embedding\.bessel_fn\.gaussian_weights$"), "radial_embedding.basis.centres"),
            (re.compile(r"radial_embedding\.distance_transform\.(q|p|a|alpha)$"), r"radial_embedding.transform.\1")]
_W3J = re.compile(r"(interactions\.\d+\.conv_tp)\._compiled_main_left_right\._w3j_(\d+)_(\d+)_(\d+)$")
_U = re.compile(r"(products\.\d+\.symmetric_contractions\.contractions\.\d+)\.U_matrix_(\d+)$")
_RADII = re.compile(r"(radial_embedding\.distance_transform|pair_repulsion_fn)\.covalent_radii$")
_GATES = {"silu": "silu", "tanh": "tanh", "abs": "abs"}


def read_pickled_module(path) -> PickledObject:
    """The pickled module tree of a ``.model`` file as inert records (tensors are real)."""
    source = str(path)
    with open_archive(source, "not a torch.save zip archive (mace-torch .model files are)") as archive:
        root = archive_root(archive, "data.pkl", source)
        tree = load_archive_pickle(archive, f"{root}/data.pkl", lambda key: f"{root}/data/{key}", source, MACE_MODEL_FILE)
    if not isinstance(tree, PickledObject):
        raise CheckpointError(f"expected a pickled mace-torch module, found {type(tree).__name__}", file=source)
    return tree


def _irreps(record) -> o3.Irreps:
    """e3nn Irreps from a pickled ``Irreps`` record (or an irreps string)."""
    if isinstance(record, str):
        return o3.Irreps(record)
    return o3.Irreps([(mul, tuple(ir.args[0])) for mul, ir in (entry.args[0] for entry in record.args[0])])


def _layers(root: PickledObject, name: str):
    container = root.child(name)
    modules = container.attr("_modules") if container is not None else None
    return [modules[k] for k in sorted(modules, key=int)] if modules else []


def section_from_model_tree(root: PickledObject, source: str) -> Dict[str, Any]:
    """MACEModelSection fields recovered from a pickled MACE / ScaleShiftMACE module tree."""
    if root.class_name not in ("MACE", "ScaleShiftMACE"):
        raise CheckpointError(f"not supported yet: mace-torch model class {root.qualname}", file=source)
    heads = root.attr("heads") or ["Default"]
    if len(heads) != 1:
        raise CheckpointError(f"not supported yet: multi-head models (heads {heads})", file=source)
    if root.child("joint_embedding") is not None or root.attr("cueq_config") is not None:
        raise CheckpointError("not supported yet: joint embeddings / cuequivariance layouts", file=source)
    interactions, products, readouts = _layers(root, "interactions"), _layers(root, "products"), _layers(root, "readouts")
    radial = root.child("radial_embedding")
    basis = radial.child("bessel_fn")
    radial_type = {"BesselBasis": "bessel", "GaussianBasis": "gaussian", "ChebychevBasis": "chebyshev"}.get(basis.class_name)
    transform = radial.child("distance_transform")
    buffers = root.attr("_buffers")
    hidden = _irreps(interactions[1].attr("node_feats_irreps")) if len(interactions) > 1 else _irreps(
        products[0].child("linear").attr("irreps_out"))
    last_out = _irreps(products[-1].child("linear").attr("irreps_out"))
    nonlinear = [r for r in readouts if r.class_name == "NonLinearReadoutBlock"]
    mlp_irreps, gate = "16x0e", "silu"
    if nonlinear:
        mlp_irreps = str(_irreps(nonlinear[-1].child("linear_1").attr("irreps_out")))
        act = nonlinear[-1].child("non_linearity").child("acts").child("0")
        gate = "None" if act is None else _GATES.get(act.attr("f").qualname.rsplit(".", 1)[-1], act.attr("f").qualname)
    correlations = [p.child("symmetric_contractions").child("contractions").child("0").attr("correlation") for p in products]
    energies = root.child("atomic_energies_fn").attr("_buffers")["atomic_energies"].reshape(-1)
    section = {
        "type": "mace", "model": root.class_name, "r_max": float(buffers["r_max"]),
        "radial_type": radial_type, "num_radial_basis": int(radial.attr("out_dim")),
        "num_cutoff_basis": int(radial.child("cutoff_fn").attr("_buffers")["p"]),
        "pair_repulsion": root.child("pair_repulsion_fn") is not None,
        "distance_transform": "None" if transform is None else transform.class_name.replace("Transform", ""),
        "apply_cutoff": bool(radial.attr("apply_cutoff", True)),
        "use_last_readout_only": bool(root.attr("use_last_readout_only", False)),
        "interaction": interactions[-1].class_name, "interaction_first": interactions[0].class_name,
        "max_ell": int(root.child("spherical_harmonics").attr("_lmax")),
        "correlation": correlations[0] if len(set(correlations)) == 1 else correlations,
        "use_so3": bool(root.attr("use_so3", False)),
        "use_agnostic_product": bool(root.attr("use_agnostic_product", False)),
        "num_interactions": len(interactions), "MLP_irreps": mlp_irreps,
        "radial_MLP": [int(w) for w in interactions[0].attr("radial_MLP")], "hidden_irreps": str(hidden),
        "gate": gate, "avg_num_neighbors": float(interactions[0].attr("avg_num_neighbors")),
        "atomic_numbers": [int(z) for z in buffers["atomic_numbers"]], "E0s": [float(e) for e in energies],
        "keep_last_layer_irreps": len(interactions) > 1 and last_out == hidden,
    }
    edge_irreps = root.attr("edge_irreps")
    if edge_irreps is not None:
        section["edge_irreps"] = str(_irreps(edge_irreps))
    if root.class_name == "ScaleShiftMACE":
        scale_shift = root.child("scale_shift").attr("_buffers")
        section["atomic_inter_scale"] = float(scale_shift["scale"].reshape(-1)[0])
        section["atomic_inter_shift"] = float(scale_shift["shift"].reshape(-1)[0])
    return section


def _check_value(name: str, value: torch.Tensor, expected: float, source: str) -> None:
    tolerance = 10 * torch.finfo(value.dtype).eps if value.is_floating_point() else 0.0  # stored in the file's precision
    if value.numel() and not np.allclose(value.double().reshape(-1).numpy(), expected, rtol=tolerance, atol=tolerance):
        raise CheckpointError(f"{name} = {value.reshape(-1).tolist()} contradicts the hyperparameters ({expected})",
                              file=source)


def _checked_values(model: MACE) -> Dict[str, Any]:
    radial = model.radial_embedding
    values = {"radial_embedding.bessel_fn.r_max": model.cutoff, "radial_embedding.cutoff_fn.r_max": model.cutoff,
              "radial_embedding.cutoff_fn.p": radial.cutoff.p, "r_max": model.cutoff,
              "num_interactions": len(model.interactions), "atomic_numbers": model.atomic_numbers_list,
              "radial_embedding.bessel_fn.n": list(range(1, radial.num_basis + 1))}
    if hasattr(radial.basis, "prefactor"):
        values["radial_embedding.bessel_fn.prefactor"] = radial.basis.prefactor
    if model.pair_repulsion:
        values["pair_repulsion_fn.p"] = model.pair_repulsion_fn.p
    return values


def _adopt_u(model: MACE, prefix: str, nu: int, tensor: torch.Tensor) -> None:
    """Give a contraction the file's U of degree nu when its shape differs (another coupling basis)."""
    contraction = model.get_submodule(prefix)
    current = getattr(contraction, f"U_matrix_{nu}")
    if current.shape == tensor.shape:
        return
    contraction.register_buffer(f"U_matrix_{nu}", tensor.to(current.dtype).clone())
    old = contraction.weight(nu)
    fresh = torch.nn.Parameter(old.new_zeros(old.shape[0], tensor.shape[-1], old.shape[2]))
    if nu == contraction.correlation:
        contraction.weights_max = fresh
    else:
        contraction.weights[contraction.correlation - 1 - nu] = fresh


def load_mace_state(model: MACE, state: Dict[str, torch.Tensor], source: str) -> MACE:
    """Load a mace-torch state dict into ``model`` (module docstring's name mapping); returns the model."""
    mapped, checked = {}, _checked_values(model)
    for key, value in state.items():
        if _DROPPED.match(key):
            if key.endswith(".bias") and value.numel():
                raise CheckpointError(f"not supported yet: biases in e3nn linears ({key})", file=source)
            continue
        if _CHECKED.match(key):
            if key in checked:
                _check_value(key, value, checked[key], source)
            continue
        w3j, u, radii = _W3J.match(key), _U.match(key), _RADII.match(key)
        if w3j:
            tp, ls = model.get_submodule(w3j.group(1)), tuple(int(g) for g in w3j.groups()[1:])
            for p, (i, j, ir_out) in enumerate(tp.paths):
                if (tp.blocks_in[i].l, tp.blocks_sh[j].l, ir_out.l) == ls:
                    tp.set_path_coupling(p, value.double())
            continue
        if radii:
            owner = model.radial_embedding.transform if radii.group(1).startswith("radial") else model.pair_repulsion_fn
            owner.radii = value.to(owner.radii.dtype)[model.atomic_numbers.cpu()].clone()
            continue
        if u:
            _adopt_u(model, u.group(1), int(u.group(2)), value)
        for pattern, replacement in _RENAMED:
            if pattern.match(key):
                key = pattern.sub(replacement, key)
                break
        mapped[key] = value
    own = model.state_dict()
    unknown = sorted(set(mapped) - set(own))
    if unknown:
        raise CheckpointError(f"parameters mlpot's MACE does not have: {unknown[:5]}", file=source)
    for key in ("atomic_energies_fn.atomic_energies", "scale_shift.scale", "scale_shift.shift"):
        if key in mapped and key in own and mapped[key].numel() == own[key].numel():  # () / (S,) as built by hand
            mapped[key] = mapped[key].reshape(own[key].shape)
    for key, value in mapped.items():
        if own[key].shape != value.shape:
            raise CheckpointError(f"{key}: shape {tuple(value.shape)} in the file, {tuple(own[key].shape)} in the model "
                                  "built from its hyperparameters", file=source)
    # the model's own: 3j couplings (set above from the file where it has them) and checked scalars
    kept = {k for k in own if k.endswith("conv_tp.coupling")} | {"atomic_numbers", "num_interactions", "r_max"}
    missing = sorted(set(own) - set(mapped) - kept)
    if missing:
        raise CheckpointError(f"the file lacks parameters of the model: {missing[:5]}", file=source)
    model.load_state_dict({**{k: own[k] for k in kept}, **mapped}, strict=True)
    return model


def is_mace_model_file(path) -> bool:
    """True for a ``torch.save`` archive whose pickle names a mace-torch model class (the bytes are
    searched; nothing is unpickled)."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") or name == "data.pkl"]
            return bool(pickles) and b"mace.modules.models" in archive.read(pickles[0])
    except (zipfile.BadZipFile, OSError, KeyError):
        return False


def is_mace_checkpoint(payload: Any) -> bool:
    """True for a loaded mace_run_train checkpoint: ``{"model": state dict of a MACE, ...}``."""
    state = payload.get("model") if isinstance(payload, dict) and "format" not in payload else None
    return isinstance(state, dict) and "atomic_energies_fn.atomic_energies" in state \
        and "node_embedding.linear.weight" in state


def load_mace_model_file(path, dtype: Optional[torch.dtype] = torch.float64) -> MACE:
    """A mace-torch ``.model`` file as an mlpot MACE / ScaleShiftMACE in precision ``dtype`` (None:
    the precision of the file's weights)."""
    source = str(path)
    root = read_pickled_module(source)
    section = section_from_model_tree(root, source)
    state = module_state(root, source, allow=MACE_MODEL_FILE)
    if dtype is None:
        dtype = state["node_embedding.linear.weight"].dtype
    try:
        model = build_mace(section, dtype)
    except ConfigError as exc:
        raise CheckpointError(f"its hyperparameters cannot be built: {exc}", file=source) from None
    return load_mace_state(model, state, source)


_OPTION_KEYS = ("r_max", "radial_type", "num_radial_basis", "num_cutoff_basis", "pair_repulsion", "distance_transform",
                "apply_cutoff", "use_last_readout_only", "use_embedding_readout", "interaction", "interaction_first",
                "max_ell", "correlation", "use_so3", "use_agnostic_product", "num_interactions", "MLP_irreps",
                "radial_MLP", "hidden_irreps", "edge_irreps", "use_edge_irreps_first", "num_channels", "max_L", "gate")
_NON_RESIDUAL = ("RealAgnosticInteractionBlock", "RealAgnosticDensityInteractionBlock")


def _run_train_avg_num_neighbors(options: Dict[str, Any], base_dir: Path, r_max: float, source: str) -> float:
    """mace_run_train's avg_num_neighbors: mean neighbour count of the atoms that have neighbours
    over its training split of ``train_file`` (seeded shuffle, ``valid_fraction`` held out)."""
    from mlpot.data import neighbor_list, read_frames

    if options.get("statistics_file"):
        with open(base_dir / options["statistics_file"]) as handle:
            return float(json.load(handle)["avg_num_neighbors"])
    if options.get("compute_avg_num_neighbors") in (False, "False", "false"):
        return float(options.get("avg_num_neighbors", 1.0))
    if not options.get("train_file"):
        raise ConfigError("avg_num_neighbors is computed from train_file, which the options lack", file=source,
                          key="train_file")
    frames = read_frames(base_dir / options["train_file"])
    if not options.get("keep_isolated_atoms", False):
        frames = [frame for frame in frames if len(frame["positions"]) > 1]
    indices = list(range(len(frames)))
    if not options.get("valid_file"):
        fraction = float(options.get("valid_fraction", 0.1))
        train_size = min(len(indices) - int(fraction * len(indices)), len(indices) - 1)
        np.random.default_rng(int(options.get("seed", 123))).shuffle(indices)
        indices = indices[:train_size]
    counts = []
    for k in indices:
        frame = frames[k]
        edge_index, _ = neighbor_list(frame["positions"], frame["cell"], frame["pbc"], r_max)
        counts.append(np.unique(edge_index[0], return_counts=True)[1])
    return float(np.concatenate(counts).astype(np.float64).mean())


def section_from_run_train_options(options: Dict[str, Any], state: Dict[str, torch.Tensor], *, source: str,
                                   base_dir: Path, avg_num_neighbors: Optional[float] = None) -> Dict[str, Any]:
    """MACEModelSection fields of a mace_run_train run: its options plus the data-derived buffers of its
    state dict (element table, E0s, scale, shift). ``--model MACE`` becomes a ScaleShiftMACE whose
    first interaction is non-residual, as mace_run_train builds it."""
    model = options.get("model", "MACE")
    if model not in ("MACE", "ScaleShiftMACE"):
        raise ConfigError(f"not supported yet: model {model!r}", file=source, key="model")
    section: Dict[str, Any] = {key: options[key] for key in _OPTION_KEYS if key in options}
    section["type"], section["model"] = "mace", "ScaleShiftMACE"
    if model == "MACE" and section.get("interaction_first", "RealAgnosticResidualInteractionBlock") not in _NON_RESIDUAL:
        section["interaction_first"] = "RealAgnosticInteractionBlock"
    for key in ("pair_repulsion", "apply_cutoff", "use_last_readout_only", "use_so3", "use_agnostic_product"):
        if isinstance(section.get(key), str):
            section[key] = section[key].lower() in ("true", "1", "yes")
    section["atomic_numbers"] = [int(z) for z in state["atomic_numbers"]]
    section["E0s"] = [float(e) for e in state["atomic_energies_fn.atomic_energies"].reshape(-1)]
    section["atomic_inter_scale"] = float(state["scale_shift.scale"].reshape(-1)[0])
    section["atomic_inter_shift"] = float(state["scale_shift.shift"].reshape(-1)[0])
    if avg_num_neighbors is None:
        avg_num_neighbors = _run_train_avg_num_neighbors(options, base_dir, float(options.get("r_max", 5.0)), source)
    section["avg_num_neighbors"] = float(avg_num_neighbors)
    return section


def load_mace_checkpoint(path, options, dtype: Optional[torch.dtype] = torch.float64,
                         avg_num_neighbors: Optional[float] = None) -> MACE:
    """A mace_run_train checkpoint (``{"model": state_dict, ...}``) with its options (a YAML path or a
    dict; relative data paths resolve against the YAML's folder) as an mlpot model (``dtype`` None:
    the precision of the checkpoint's weights)."""
    import yaml

    source = str(path)
    base_dir = Path(".")
    if not isinstance(options, dict):
        base_dir = Path(options).parent
        try:
            options = yaml.safe_load(Path(options).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read the mace_run_train options: {exc}", file=str(options)) from None
    try:
        checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read the checkpoint: {exc}", file=source) from None
    state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError("expected a mace_run_train checkpoint, a dict with a 'model' state dict", file=source)
    section = section_from_run_train_options(options, state, source=source, base_dir=base_dir,
                                             avg_num_neighbors=avg_num_neighbors)
    return load_mace_state(build_mace(section, dtype or state["node_embedding.linear.weight"].dtype), state, source)
