"""The models of chapter 8: recurrent cores, the LanguageModel (one LightningModule for all),
clipping, perplexity, generation after a warm-up, the n-gram models, learning-rate schedules,
weight averaging, and one held-out stream read as many rows (streams.py)."""
