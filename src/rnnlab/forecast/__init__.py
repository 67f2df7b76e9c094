"""D2L 8.1: a noisy sine wave, the MLP on lagged values, a latent-autoregressive RNN, and
k-step-ahead prediction (scripts/forecast.py)."""
