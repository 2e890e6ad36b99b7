"""encseg."""
