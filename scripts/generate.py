"""Continue a prefix with a trained model; the checkpoint alone is enough (config + vocab inside).

    python scripts/generate.py ckpt_path=outputs/runs/<date>/<time>/checkpoints/last.ckpt \
        prefix="time traveller" num_preds=50 [temperature=0.8]
    python scripts/generate.py ckpt_path=... 'prefix="hello, world"'    # a comma: quote twice

A comma in a value is Hydra's sweep syntax, so `prefix=hello, world` is refused; the inner
quotes make it one string (the outer ones keep the shell from eating them).
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from rnnlab.config.cli import check_command_line, run_main  # noqa: E402


def sample(cfg: DictConfig) -> str:
    import torch

    from rnnlab.models.generate import generate, load_checkpoint

    if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={cfg.device} but no CUDA GPU is visible; use device=cpu")
    model = load_checkpoint(cfg.ckpt_path, map_location="cpu").to(cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed)
    text = generate(model, str(cfg.prefix), cfg.num_preds, cfg.temperature, gen)
    print(text)
    return text


@hydra.main(version_base="1.3", config_path="../conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    run_main(sample, cfg)


if __name__ == "__main__":
    check_command_line(ROOT / "conf", "generate")  # typos: one line, before Hydra and torch
    sys.exit(main())
