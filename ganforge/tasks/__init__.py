"""Tasks: what is trained (modules, optimizers, phases, checkpointed state, what a sample is)."""
