"""mlpot.nn."""
