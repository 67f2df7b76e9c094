"""The text pipeline (D2L 8.2-8.3): corpus download and cache, preprocessing, the vocabulary,
epoch plans of windows (random sampling, sequential partitioning, BPTT truncation), the
DataModule."""
