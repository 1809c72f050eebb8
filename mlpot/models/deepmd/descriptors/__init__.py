"""DeePMD-style descriptors; ``DESCRIPTORS`` is filled in ``mlpot.models.deepmd``."""

from mlpot.models.deepmd.descriptors.base import DESCRIPTORS, Descriptor, EnvMatrixDescriptor
from mlpot.models.deepmd.descriptors.dpa2 import DescriptorDPA2
from mlpot.models.deepmd.descriptors.hybrid import DescriptorHybrid
from mlpot.models.deepmd.descriptors.loc_frame import DescriptorLocFrame
from mlpot.models.deepmd.descriptors.se_a_mask import DescriptorSeAMask
from mlpot.models.deepmd.descriptors.se_a_tpe import DescriptorSeATpe
from mlpot.models.deepmd.descriptors.se_e2_a import DescriptorSeA, DescriptorSeAEbdV2
from mlpot.models.deepmd.descriptors.se_e2_r import DescriptorSeR
from mlpot.models.deepmd.descriptors.se_e3 import DescriptorSeE3
from mlpot.models.deepmd.descriptors.se_e3_tebd import DescriptorSeE3Tebd
from mlpot.models.deepmd.descriptors.se_atten import DescriptorSeAtten, DescriptorSeAttenV2

__all__ = ["DESCRIPTORS", "Descriptor", "EnvMatrixDescriptor", "DescriptorSeA", "DescriptorSeAEbdV2", "DescriptorSeAMask", "DescriptorSeATpe", "DescriptorLocFrame", "DescriptorSeR", "DescriptorHybrid",
           "DescriptorSeE3", "DescriptorSeE3Tebd", "DescriptorSeAtten", "DescriptorSeAttenV2", "DescriptorDPA2"]
