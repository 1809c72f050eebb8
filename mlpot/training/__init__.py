"""mlpot.training."""
