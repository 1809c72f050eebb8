"""mlpot.models."""
