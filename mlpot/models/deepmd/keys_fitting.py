"""Model-section keys of the DeePMD fittings (``model/fitting_net``: ener, dipole, polar, dos), listed once.

Split from ``keys.py`` (which re-exports them) to keep that module small; the builders
(``fitting.py``, ``tensor_fitting.py``), the section check, the front-end and docs/deepmd_keys.md read
these tables.
"""

from __future__ import annotations

from typing import Annotated, Any, Dict, List, Optional, Union

from pydantic import Field

from mlpot.models.sections import Key, ignored, key, unsupported

__all__ = ["FIT_ENER", "FIT_DIPOLE", "FIT_POLAR", "FIT_DOS", "FITTING_KEYS", "UNBUILT_FITTINGS", "Number", "Neurons"]

Number = float
Neurons = List[Annotated[int, Field(ge=1)]]  # layer widths

# ---- fittings (model/fitting_net) ----------------------------------------------------------------
_FITTING: Dict[str, Key] = {
    "type": key("ener", annotation=str),
    "neuron": key([120, 120, 120], "n_neuron", annotation=Neurons),
    "activation_function": key("tanh", annotation=str),
    "resnet_dt": key(True, annotation=bool),
    "precision": key("default", annotation=str),
    "seed": key(None, annotation=Optional[int]),
    "trainable": key(True, note="bool or one bool per layer", annotation=Union[bool, List[bool]]),
    "numb_fparam": key(0, annotation=int),
    "numb_aparam": key(0, annotation=int),
    "default_fparam": key(None, note="numb_fparam values used for every frame without fparam: systems without "
                          "fparam.npy (training, and the fparam statistics, where they count with it), inference "
                          "without fparam; stored with the model (DeePMD-kit 3.2's statistics of a mix of systems "
                          "with and without fparam.npy depend on their order)",
                          annotation=Optional[List[Number]]),
    "tf_resnet": key(False, note="mlpot key, set when a DeePMD-kit TF graph (.pb) is read: TF's fitting-net rule (no "
                     "residual on the first hidden layer nor where the width doubles); DeePMD-kit PT's rule when false",
                     annotation=bool),
    "dim_case_embd": unsupported(0, note="task embedding of a fitting shared between multi-task heads: not built (heads have their own fitting)"),
    "layer_name": unsupported(None, note="TF names for sharing fitting layers between models: not built"),
    "use_aparam_as_mask": unsupported(False, note="aparam as an atom mask (se_a_mask models): not built yet"),
}
FIT_ENER: Dict[str, Key] = {**_FITTING, "rcond": key(None, annotation=Optional[Number]),
                            "use_aparam_as_mask": key(False, note="aparam (numb_aparam 1) marks real (non-zero) and "
                                                      "virtual (0) atoms: not a net input; virtual atoms have no "
                                                      "energy and no neighbours (se_a_mask models)", annotation=bool),
                            "atom_ener": key(None, annotation=Optional[List[Optional[Number]]]),
                            "preset_out_bias": key(None, note="per type: null or a value (set from model/preset_out_bias)",
                                                   annotation=Any)}
_TENSOR: Dict[str, Key] = {
    **_FITTING,
    "r_differentiable": ignored(note="mlpot's tensor is always differentiable"),
    "c_differentiable": ignored(note="mlpot's tensor is always differentiable"),
    "exclude_types": unsupported(None, note="types whose tensor is zeroed: use sel_type (the types that carry it)"),
}
FIT_DIPOLE: Dict[str, Key] = {**_TENSOR, "sel_type": key(None, "dipole_type", annotation=Optional[List[int]])}
FIT_POLAR: Dict[str, Key] = {**_TENSOR, "sel_type": key(None, "pol_type", annotation=Optional[List[int]]),
                             "fit_diag": key(True, annotation=bool), "scale": key(1.0, annotation=Any),
                             "shift_diag": key(True, annotation=bool)}
FIT_DOS: Dict[str, Key] = {**FIT_ENER, "numb_dos": key(300, annotation=int)}
del FIT_DOS["atom_ener"]
FITTING_KEYS: Dict[str, Dict[str, Key]] = {"ener": FIT_ENER, "dipole": FIT_DIPOLE, "polar": FIT_POLAR, "dos": FIT_DOS}
UNBUILT_FITTINGS = ("property", "population", "dens")
