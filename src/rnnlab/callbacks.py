"""Training callbacks: generated text samples in TensorBoard's text tab.

    callbacks: [SampleText(every_n_epochs=5, prefix="time traveller", num_preds=50)]
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl

from rnnlab.generate import generate

log = logging.getLogger(__name__)


class SampleText(pl.Callback):
    """Every `every_n_epochs` epochs, greedily continue `prefix` and log it (and print it)."""

    def __init__(self, every_n_epochs: int = 5, prefix: str = "time traveller",
                 num_preds: int = 50):
        self.every_n_epochs, self.prefix, self.num_preds = every_n_epochs, prefix, num_preds

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if not self.every_n_epochs or epoch % self.every_n_epochs or pl_module.vocab is None:
            return
        text = generate(pl_module, self.prefix, self.num_preds)
        log.info("epoch %d sample: %s", epoch, text)
        for logger in trainer.loggers:
            if hasattr(logger.experiment, "add_text"):
                logger.experiment.add_text("sample", text, global_step=trainer.global_step)

