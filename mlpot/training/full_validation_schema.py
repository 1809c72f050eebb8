"""The ``full_validation`` section of the native config (DeePMD-kit's ``validating``)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator

from mlpot.training._strict import Strict

__all__ = ["FULL_VALIDATION_METRICS", "FullValidationConfig"]

# full-validation metric family -> the loss labels that train it (one of them needs a term)
FULL_VALIDATION_METRICS = {"E": ("energy",), "F": ("forces",), "S": ("virial", "stress"), "V": ("virial", "stress")}


class FullValidationConfig(Strict):
    """Full validation (DeePMD-kit ``validating``): every ``freq`` steps the WHOLE validation set
    is evaluated, the errors go to ``log_file`` and the best checkpoints by ``metric`` are kept.

    Errors are those of ``dp test``: E = energy per atom (meV/atom), F = force components (meV/Å),
    V = virial per atom (meV/atom), S = stress -virial/volume (meV/Å^3), each as MAE and RMSE pooled
    over every frame carrying the label (virial and stress: periodic frames only).
    """

    live: bool = Field(True, description="validate the current weights: log log_file, best checkpoints "
                       "best.ckpt-<step>.t-<rank>.pt (DeePMD full_validation)")
    ema: bool = Field(False, description="validate the EMA weights (needs the ema section): log "
                      "<log_file stem>_ema<suffix>, checkpoints best_ema.ckpt-<step>.t-<rank>.pt "
                      "(DeePMD ema_full_validation)")
    freq: int = Field(5000, ge=1, description="steps between two full validations (DeePMD validation_freq)")
    start: float = Field(0.5, ge=0, description="first step: 0 = from the start, in (0, 1) = that fraction of the "
                         "run's steps (int(fraction * steps)), 1 = never (off), > 1 = that step (int); a "
                         "validation runs after displayed step s when s >= start and (s - start) % freq == 0 "
                         "(DeePMD full_val_start)")
    metric: str = Field("E:MAE", description="ranking metric <family>:<stat>, family E | F | S | V, stat MAE | "
                        "RMSE, case-insensitive (DeePMD validation_metric); its family needs a loss term")
    save_best: bool = Field(True, description="write the best checkpoints (DeePMD save_best)")
    max_best: int = Field(1, ge=1, description="best checkpoints kept; rank 1 has the lowest metric, ties go to "
                          "the earlier step (DeePMD max_best_ckpt)")
    best_dir: Optional[str] = Field(None, description="folder of the best checkpoints, relative to output_dir "
                                    "(default: the folder of the training checkpoints) (DeePMD save_best_dir)")
    log_file: str = Field("val.log", description="full-validation log, relative to output_dir (DeePMD full_val_file)")
    chunk_atoms: int = Field(1024, ge=1, description="frames are evaluated in file order in chunks of at most this "
                             "many atoms (a larger frame is a chunk of its own)")

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        family, _, stat = value.strip().upper().partition(":")
        if family in ("FR", "FM") and stat in ("MAE", "RMSE"):
            raise ValueError(f"not supported yet: spin metric {value!r}")
        if family not in FULL_VALIDATION_METRICS or stat not in ("MAE", "RMSE"):
            raise ValueError(f"expected one of E:MAE, E:RMSE, F:MAE, F:RMSE, S:MAE, S:RMSE, V:MAE, V:RMSE, got {value!r}")
        return f"{family}:{stat}"

    @property
    def active(self) -> bool:
        """False when ``start`` is 1 (DeePMD: the feature is off)."""
        return self.start != 1.0

    def start_step(self, total_steps: int) -> Optional[int]:
        """First displayed step of a run of ``total_steps`` steps, or None when off."""
        if not self.active:
            return None
        return int(total_steps * self.start) if self.start < 1.0 else int(self.start)
