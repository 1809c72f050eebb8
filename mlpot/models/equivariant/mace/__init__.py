"""MACE (mace-torch 0.3.14-0.3.16 architecture) in mlpot: model, section and builder, file readers.

* ``MACE``, ``ScaleShiftMACE``: the models (``model.py``), AtomisticModel subclasses;
* ``MACEModelSection``, ``build_mace``: the typed model section and its builder (``section.py``);
* ``load_mace_model_file``, ``load_mace_checkpoint``: mace-torch's ``.model`` files (read without
  running their code) and training checkpoints (``files.py``); ``is_mace_model_file`` /
  ``is_mace_checkpoint`` recognise them;
* ``hooks``: the family's hooks into the training engine (data statistics, fine-tuning).
"""

from mlpot.models.equivariant.mace.files import (is_mace_checkpoint, is_mace_model_file, load_mace_checkpoint,
                                                 load_mace_model_file)
from mlpot.models.equivariant.mace.model import MACE, ScaleShiftMACE
from mlpot.models.equivariant.mace.section import MACEModelSection, build_mace

__all__ = ["MACE", "ScaleShiftMACE", "MACEModelSection", "build_mace", "load_mace_model_file", "load_mace_checkpoint",
           "is_mace_model_file", "is_mace_checkpoint"]
