"""Many runs: the resumable grid sweeper's manifest and launcher, the seeded Optuna search."""
