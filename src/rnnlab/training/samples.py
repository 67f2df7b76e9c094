"""Training callbacks: generated text samples in TensorBoard's text tab.

    callbacks: [SampleText(every_n_epochs=5, prefix=None, num_preds=50)]

Besides every `every_n_epochs` epochs (0: never), a sample is written when training ends, so
every run has one however few epochs it ran. The prefix `None` (the default) is the book's
"time traveller" where the training text holds it, else the training text's first words: a
prefix of the corpus itself, never one made of `<unk>`s on another text.
"""

from __future__ import annotations

import logging

import numpy as np
import pytorch_lightning as pl

from rnnlab.models.generate import generate
from rnnlab.text.vocab import join_tokens, preprocess, tokenize

BOOK_PREFIX = "time traveller"

log = logging.getLogger(__name__)


class SampleText(pl.Callback):
    """Every `every_n_epochs` epochs and at the end of training, greedily continue `prefix` and
    log it (and print it)."""

    def __init__(self, every_n_epochs: int = 5, prefix: str | None = None,
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
        if self.prefix is None:
            corpus = getattr(trainer.datamodule, "corpus", None)
            self.prefix = corpus_prefix(corpus["train"], pl_module) if corpus else BOOK_PREFIX
            log.info("sample prefix %r (callbacks.sample_text.prefix sets another)", self.prefix)
        text = generate(pl_module, self.prefix, self.num_preds)
        self._sampled_step = trainer.global_step
        log.info("%s sample: %s", when, text)
        for logger in trainer.loggers:
            if hasattr(logger.experiment, "add_text"):
                logger.experiment.add_text("sample", text, global_step=trainer.global_step)

def corpus_prefix(train_ids, model, words: int = 3, search: int = 1 << 20) -> str:
    """The book's prefix where the start of the training text (its first `search` tokens) holds
    it, else the training text's first `words` words (first characters up to the third space)."""
    vocab, token = model.vocab, model.token
    book = vocab[tokenize(preprocess(BOOK_PREFIX, model.preprocess), token)]
    ids = np.asarray(train_ids[:search])
    if len(ids) >= len(book) and vocab.unk not in book:
        windows = np.lib.stride_tricks.sliding_window_view(ids, len(book))
        if (windows == np.asarray(book)).all(1).any():
            return BOOK_PREFIX
    if token == "word":
        return join_tokens(vocab.to_tokens(ids[:words].tolist()), token)
    text = join_tokens(vocab.to_tokens(ids[:200].tolist()), token).strip()
    return " ".join(text.split(" ")[:words]) or text[:20]
