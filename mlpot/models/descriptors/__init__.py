"""DeePMD-style descriptors, registered by name in ``DESCRIPTORS``."""

from mlpot.models.descriptors.base import DESCRIPTORS, Descriptor, EnvMatrixDescriptor
from mlpot.models.descriptors.se_e2_a import DescriptorSeA

__all__ = ["DESCRIPTORS", "Descriptor", "EnvMatrixDescriptor", "DescriptorSeA"]
