"""One training run: its lifecycle (run.py), the monitor and other callbacks, TensorBoard,
DDP, and what an earlier launch left in its dir (relaunch.py)."""
