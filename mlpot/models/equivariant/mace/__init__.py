"""MACE (mace-torch 0.3.14-0.3.16 architecture) in mlpot: model, section and builder, file readers.

* ``MACE``, ``ScaleShiftMACE``: the models (``model.py``), AtomisticModel subclasses;
* ``MACEModelSection``, ``build_mace``: the typed model section and its builder (``section.py``);
* ``load_mace_model_file``, ``load_mace_checkpoint``: mace-torch's ``.model`` files (read without
  running their code) and training checkpoints (``files.py``).
"""

from mlpot.models.equivariant.mace.files import load_mace_checkpoint, load_mace_model_file
from mlpot.models.equivariant.mace.model import MACE, ScaleShiftMACE
from mlpot.models.equivariant.mace.section import MACEModelSection, build_mace

__all__ = ["MACE", "ScaleShiftMACE", "MACEModelSection", "build_mace", "load_mace_model_file", "load_mace_checkpoint"]
