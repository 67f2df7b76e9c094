"""Scoring beyond one pass of val/test: held-out streams, dynamic evaluation, the n-gram mixture,
and the gradients-through-time probe (D2L 8.7)."""
