"""Performance workloads behind `scripts/benchmark.py`: each is built from the project's own configs and trainer
step (not a copy of the model), timed on the accelerator, and paired with a PyTorch peer (`scripts/peers/`) run at
the same shapes in the same command. One FLOP formula (`flops.py`) serves both sides."""
