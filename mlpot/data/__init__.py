"""mlpot.data."""
