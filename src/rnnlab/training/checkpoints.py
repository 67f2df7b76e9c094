"""Checkpoint files that survive a kill and a move.

AtomicCheckpointIO writes each checkpoint to a temp file and renames it. MovableCheckpoint is
Lightning's ModelCheckpoint for a run dir that may have been moved or copied (another disk,
another machine): Lightning keeps the best checkpoint's old absolute path and drops its score
when the dir changed, so a resumed run would test a file that is not there; here the saved
paths are read as relative to the new dir.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temp file in the same dir, then rename: a kill never leaves half a file."""

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)


class MovableCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose restored state follows its dir when the run dir was moved."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            state_dict = {**state_dict, "dirpath": self.dirpath}
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if state_dict.get(key):
                    state_dict[key] = self._moved(state_dict[key], old)
            if state_dict.get("best_k_models"):
                state_dict["best_k_models"] = {self._moved(p, old): v
                                               for p, v in state_dict["best_k_models"].items()}
        super().load_state_dict(state_dict)

    def _moved(self, path: str, old_dir: str) -> str:
        try:
            return str(Path(self.dirpath) / Path(path).relative_to(old_dir))
        except ValueError:  # saved outside its own dir: leave it as it was
            return path
