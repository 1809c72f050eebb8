"""mlpot.config: the peer front-ends (DeePMD-kit, DeePseudopot...) and the loader that reads a native
YAML or a front-end's result into the engine's schema (``mlpot.training.schema.NativeConfig``)."""

from mlpot.config.loader import load_config, read_yaml, validate_config
from mlpot.training.schema import NativeConfig

__all__ = ["NativeConfig", "load_config", "read_yaml", "validate_config"]
