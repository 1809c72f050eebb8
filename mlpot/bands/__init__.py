"""mlpot.bands."""
