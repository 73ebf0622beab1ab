"""The `experiment` environment (seed 000): experiment cycles with knowledge, research and git."""
