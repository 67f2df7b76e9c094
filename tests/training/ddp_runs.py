"""Several training runs under one 2-rank DDP launch (used by tests/test_distributed.py).

    python tests/ddp_runs.py OUT_DIR CORPUS NAME=OVERRIDE[;OVERRIDE...] ...

Each NAME is trained with `trainer=ddp trainer.devices=2` into OUT_DIR/NAME. Lightning re-runs
this script for rank 1 (no Hydra runtime here, so its plain re-launch), and every later Trainer
of the script reuses the process group: the ranks start once for all runs, which keeps the
equivalence test within its minute.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from rnnlab.training.run import train  # noqa: E402


def main(out_dir: str, corpus: str, *runs: str) -> None:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for run in runs:
            name, overrides = run.split("=", 1)
            cfg = compose("train", overrides=[
                f"data.path={corpus}", "trainer=ddp", "trainer.devices=2",
                "trainer.accelerator=cpu", f"paths.output_dir={Path(out_dir) / name}",
                *overrides.split(";")])
            train(cfg)


if __name__ == "__main__":
    main(*sys.argv[1:])
