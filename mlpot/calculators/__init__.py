"""mlpot.calculators."""
