"""mlpot.config: the native schema (pydantic) and the loader; peer front-ends live beside them."""

from mlpot.config.loader import load_config, read_yaml, validate_config
from mlpot.config.schema import NativeConfig

__all__ = ["NativeConfig", "load_config", "read_yaml", "validate_config"]
