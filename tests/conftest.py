"""Shared test fixtures: tiny corpora and Hydra configs composed in-process and shrunk."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
torch.set_num_threads(1)
# one machine cache of kernel decisions for the session's in-process runs, not the project's
KERNEL_CACHE = Path(tempfile.mkdtemp(prefix="rnnlab-kernels-"))

TEXT = (
    "The Time Traveller (for so it will be convenient to speak of him) was expounding a "
    "recondite matter to us. His grey eyes shone and twinkled, and his usually pale face was "
    "flushed and animated. The fire burned brightly, and the soft radiance of the incandescent "
    "lights in the lilies of silver caught the bubbles that flashed and passed in our glasses. "
)


def run_script(path: str, *args: str, timeout: int = 300, env: dict | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
    """A project script (`path` from the project root, e.g. "scripts/train.py") run in a new
    Python process as a user runs it, its output captured as text."""
    return subprocess.run([sys.executable, str(ROOT / path), *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd)


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT * 8)
    return path


def make_cfg(tmp_path: Path, corpus: Path, overrides: list[str] = ()):
    """The train config, composed as the CLI would, shrunk to seconds on a CPU."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True, overrides=[
            f"data.path={corpus}", "data.batch_size=4", "data.num_steps=8",
            "model.core.num_hiddens=16", "trainer.max_epochs=1", "trainer.accelerator=cpu",
            "trainer.log_every_n_steps=1", "callbacks.sample_text.every_n_epochs=1",
            f"kernels.cache_dir={KERNEL_CACHE}",
            f"hydra.run.dir={tmp_path / 'run'}", *overrides])
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture
def compose_run(tmp_path):
    """Compose a primary config as the CLI would, its run dir in tmp_path; reset Hydra after."""

    def _compose(config: str, overrides: list[str]):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config, overrides=overrides, return_hydra_config=True)
        GlobalHydra.instance().clear()
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _compose
    HydraConfig.instance().cfg = None


@pytest.fixture
def cfg_factory(tmp_path: Path, corpus_file: Path):
    return lambda *overrides, path=corpus_file: make_cfg(tmp_path, path, list(overrides))


class SignalAtStep:
    """A callback that sends this process a signal after a given training step (tests only)."""

    def __new__(cls, step: int, signum: int = 2):
        import signal

        import pytorch_lightning as pl

        class _Cb(pl.Callback):
            def on_train_batch_end(self, trainer, *args) -> None:
                if trainer.global_step == step:
                    os.kill(os.getpid(), signal.Signals(signum))

        return _Cb()
