"""mlpot.config."""
