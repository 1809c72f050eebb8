"""mlpot.electrostatics."""
