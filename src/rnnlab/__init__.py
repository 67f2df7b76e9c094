"""rnnlab: recurrent language models from D2L chapter 8 with PyTorch Lightning + Hydra."""

__version__ = "0.1.0"
