"""The DeePMD family: descriptors, fitting nets, type embedding, the standard and multi-task models,
their model-section keys, and fine-tuning by type name.

The component registries are filled here, explicitly and in one place: descriptors by name
(``DESCRIPTORS``, aliases as in DeePMD-kit) and fitting nets (``FITTINGS``). The family's hooks for
``mlpot.models.registry`` (section check, builders, data resolution, fine-tuning) are exported here.
"""

from mlpot.models.deepmd.builders import build_standard
from mlpot.models.deepmd.data_hooks import prepare_finetune_hook as prepare_finetune
from mlpot.models.deepmd.data_hooks import resolve_from_data
from mlpot.models.deepmd.descriptors import (DESCRIPTORS, DescriptorDPA2, DescriptorHybrid, DescriptorLocFrame, DescriptorSeA,
                                             DescriptorSeAEbdV2, DescriptorSeAMask, DescriptorSeATpe, DescriptorSeAtten,
                                             DescriptorSeAttenV2, DescriptorSeE3, DescriptorSeE3Tebd, DescriptorSeR)
from mlpot.models.deepmd.fitting import FITTINGS, DosFitting, EnerFitting
from mlpot.models.deepmd.keys import check_model_section
from mlpot.models.deepmd.multitask import build_multi_task
from mlpot.models.deepmd.tensor_fitting import DipoleFitting, PolarFitting

__all__ = ["DESCRIPTORS", "FITTINGS", "build_standard", "build_multi_task", "check_model_section", "resolve_from_data",
           "prepare_finetune"]


def _register_components() -> None:
    DESCRIPTORS.register("se_e2_a", DescriptorSeA, aliases=("se_a",))
    DESCRIPTORS.register("se_e2_r", DescriptorSeR, aliases=("se_r",))
    DESCRIPTORS.register("se_e3", DescriptorSeE3, aliases=("se_at", "se_a_3be", "se_t"))
    DESCRIPTORS.register("se_atten", DescriptorSeAtten, aliases=("dpa1",))
    DESCRIPTORS.register("se_atten_v2", DescriptorSeAttenV2)
    DESCRIPTORS.register("se_e3_tebd", DescriptorSeE3Tebd)
    DESCRIPTORS.register("se_a_ebd_v2", DescriptorSeAEbdV2, aliases=("se_a_tpe_v2",))
    DESCRIPTORS.register("se_a_mask", DescriptorSeAMask)
    DESCRIPTORS.register("loc_frame", DescriptorLocFrame)
    DESCRIPTORS.register("se_a_tpe", DescriptorSeATpe, aliases=("se_a_ebd",))
    DESCRIPTORS.register("hybrid", DescriptorHybrid)
    DESCRIPTORS.register("dpa2", DescriptorDPA2)
    FITTINGS.register("ener", EnerFitting)
    FITTINGS.register("dos", DosFitting)
    FITTINGS.register("dipole", DipoleFitting)
    FITTINGS.register("polar", PolarFitting, aliases=("polarizability",))


_register_components()
