"""Stopping a run on a signal without losing it: SIGINT/SIGTERM (and a cluster's time-limit
signal) finish the current step, save last.ckpt, and end the run with a summary.

    callbacks.append(StopOnSignal(ckpt_dir))  # training.run, before trainer.fit
    except Interrupted: ...                   # raised right after last.ckpt is written
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytorch_lightning as pl

from rnnlab.training.distributed import agree_on_signal

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Raised right after the signal's checkpoint is saved, so that nothing runs after it
    (Lightning would otherwise validate and save a checkpoint of a half epoch)."""


class StopOnSignal(pl.Callback):
    """SIGINT/SIGTERM: finish the current step, save last.ckpt, stop. A second signal kills.

    In a submitit job (SLURM, or its local executor) submitit's handler of the time-limit signal
    (SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise) is taken over the same way and
    called once last.ckpt and the summary are written (`hand_over`): it requeues the job into
    the same job dir, where it resumes."""

    def __init__(self, ckpt_dir: Path):
        self.ckpt_dir, self.received = ckpt_dir, None
        self._previous = {}
        self._requeue = None  # submitit's handler of the signal received, if it had one

    def _handler(self, signum, frame) -> None:
        if self.received is not None:  # second signal: the user means it
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        if signum not in (signal.SIGINT, signal.SIGTERM):
            self._requeue = self._previous.get(signum)
        log.warning("%s received: saving last.ckpt after this step, then stopping", self.received)

    def on_train_start(self, trainer, pl_module) -> None:
        # installed after Lightning's own SIGTERM handler (which would raise SIGTERMException
        # and exit 0 without a summary), replacing it for the duration of training
        usr = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
        ours = [signal.SIGINT, signal.SIGTERM]
        if usr is not None and callable(signal.getsignal(usr)):  # submitit's requeue hook
            ours.append(usr)
        for sig in ours:
            self._previous[sig] = signal.signal(sig, self._handler)

    def on_train_end(self, trainer, pl_module) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.on_train_end(trainer, pl_module)

    def hand_over(self) -> None:
        if self._requeue is not None:
            self._requeue(signal.Signals[self.received].value, None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.received = agree_on_signal(trainer, self.received)  # DDP: all ranks stop together
        if self.received is not None:
            trainer.save_checkpoint(self.ckpt_dir / "last.ckpt")
            raise Interrupted(self.received)
