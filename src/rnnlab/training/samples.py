"""Training callbacks: generated text samples in TensorBoard's text tab.

    callbacks: [SampleText(every_n_epochs=5, prefix="time traveller", num_preds=50)]

Besides every `every_n_epochs` epochs (0: never), a sample is written when training ends, so
every run has one however few epochs it ran.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl

from rnnlab.models.generate import generate

log = logging.getLogger(__name__)


class SampleText(pl.Callback):
    """Every `every_n_epochs` epochs and at the end of training, greedily continue `prefix` and
    log it (and print it)."""

    def __init__(self, every_n_epochs: int = 5, prefix: str = "time traveller",
                 num_preds: int = 50):
        self.every_n_epochs, self.prefix, self.num_preds = every_n_epochs, prefix, num_preds
        self._sampled_step: int | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs and epoch % self.every_n_epochs == 0:
            self._sample(trainer, pl_module, f"epoch {epoch}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._sampled_step != trainer.global_step:  # the last epoch's sample is this one
            self._sample(trainer, pl_module, "final")

    def _sample(self, trainer: pl.Trainer, pl_module: pl.LightningModule, when: str) -> None:
        if getattr(pl_module, "vocab", None) is None:
            return
        text = generate(pl_module, self.prefix, self.num_preds)
        self._sampled_step = trainer.global_step
        log.info("%s sample: %s", when, text)
        for logger in trainer.loggers:
            if hasattr(logger.experiment, "add_text"):
                logger.experiment.add_text("sample", text, global_step=trainer.global_step)

