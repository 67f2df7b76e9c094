"""Train a recurrent language model (the project's main job).

    python scripts/train.py                                  # the book's char RNN, Time Machine
    python scripts/train.py model=lstm data.sampling=random trainer.gradient_clip_val=null
    python scripts/train.py ckpt_path=outputs/runs/<date>/<time>/checkpoints/last.ckpt  # resume
    python scripts/train.py ablation=clipping                # a whole sweep (see README)

Returns the best validation perplexity, so Hydra sweepers can minimise it.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from rnnlab.config.cli import check_command_line, run_main  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from rnnlab.training.run import train  # heavy imports after Hydra has parsed the command line

    return run_main(train, cfg)


if __name__ == "__main__":
    check_command_line(ROOT / "conf", "train")  # typos: one line, before Hydra and torch
    sys.exit(main())
