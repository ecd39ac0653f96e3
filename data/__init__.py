"""Data: leave-one-out split, synthetic world and semantic IDs."""
