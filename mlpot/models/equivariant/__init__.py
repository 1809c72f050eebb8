"""mlpot.models.equivariant."""
