"""mlpot.models.descriptors."""
