"""Autoregressive forecasting of a noisy sine wave (D2L 8.1): the book's MLP on lag features and a
latent-autoregressive RNN, evaluated one step, multi step and k steps ahead.

    python scripts/forecast.py                               # T=1000, tau=4, k in 1/4/16/64
    python scripts/forecast.py data.tau=16 data.noise=0.1 ks=[1,2,8,32]
    python scripts/forecast.py latent.model.core.kind=gru     # or latent.enabled=false

The run dir gets summary.json ({"mse": {"1": ..}, ...} for the MLP, every model under "models"),
forecast.md (the MSE table), forecast_<model>.png (data vs one-step vs multi-step),
kstep_<model>.png (k-step curves), mse_vs_k.png, and tb/<model>/ (TensorBoard, with the figures).
Returns the MLP's largest-k MSE.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from rnnlab.config.cli import check_command_line, run_main  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="forecast")
def main(cfg: DictConfig) -> float:
    from rnnlab.forecast.task import (
        forecast,  # heavy imports after Hydra has parsed the command line
    )

    return run_main(forecast, cfg)


if __name__ == "__main__":
    check_command_line(ROOT / "conf", "forecast")  # typos: one line, before Hydra and torch
    sys.exit(main())
