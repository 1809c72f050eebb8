"""DeePMD-style descriptors, registered by name in ``DESCRIPTORS``."""

from mlpot.models.descriptors.base import DESCRIPTORS, Descriptor, EnvMatrixDescriptor
from mlpot.models.descriptors.se_e2_a import DescriptorSeA
from mlpot.models.descriptors.se_e3 import DescriptorSeE3

__all__ = ["DESCRIPTORS", "Descriptor", "EnvMatrixDescriptor", "DescriptorSeA", "DescriptorSeE3"]
