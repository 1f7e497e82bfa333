"""Training engine: configuration, the training loop, checkpoints, data-parallel helpers."""
