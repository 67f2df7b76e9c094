"""Weight averaging: validate, checkpoint and score an exponential moving average of the weights.

    callbacks: {averaging: {_target_: rnnlab.models.averaging.WeightAverage, decay: 0.998}}

After every optimizer step the average moves toward the weights: avg = d * avg + (1 - d) * w,
starting from the weights after the first step (so there is no bias to correct). At the start of
each validation the average is put into the model and stays there until the next training batch:
val/ppl, early stopping, the best and last checkpoints, test and every evaluation that loads a
checkpoint (dynamic evaluation, the mixtures, generation) see the averaged weights. The weights
the optimizer is working on are kept meanwhile, and saved with this callback's state in every
checkpoint, so a resumed run goes on from them exactly. Polyak averaging (AWD-LSTM's ASGD) in the
form that suits any optimizer; the horizon is about 1 / (1 - d) steps.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from rnnlab.errors import ConfigError


class WeightAverage(pl.Callback):
    def __init__(self, decay: float = 0.998) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"callbacks.averaging.decay={decay!r}: must be in [0, 1) "
                              "(the share of the average kept at each step; 0.998 averages "
                              "about the last 500 steps)")
        self.decay = decay
        self.average: list[torch.Tensor] | None = None  # one per parameter, in parameters() order
        self.trained: list[torch.Tensor] | None = None  # the optimizer's weights while swapped out
        self._step = -1

    # the average follows every optimizer step (not every batch: accumulation, skipped steps)
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self._step:
            return
        self._step = trainer.global_step
        params = [p.detach() for p in pl_module.parameters()]
        if self.average is None:
            self.average = [p.clone() for p in params]
            return
        torch._foreach_lerp_(self.average, params, 1.0 - self.decay)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.average is None or self.trained is not None:
            return
        self._to_device(pl_module)
        params = list(pl_module.parameters())
        self.trained = [p.detach().clone() for p in params]
        _copy(params, self.average)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self._restore(pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._to_device(pl_module)
        self._restore(pl_module)  # a resumed run's checkpoint holds the average in the model

    def _restore(self, pl_module: pl.LightningModule) -> None:
        if self.trained is not None:
            _copy(list(pl_module.parameters()), self.trained)
            self.trained = None

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "step": self._step, "average": self.average,
                "trained": self.trained}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._step = state_dict["step"]
        self.average, self.trained = state_dict["average"], state_dict["trained"]

    def _to_device(self, pl_module: pl.LightningModule) -> None:
        # a checkpoint's tensors come back on the CPU, after setup(): move them to the model's
        device = next(pl_module.parameters()).device
        for name in ("average", "trained"):
            tensors = getattr(self, name)
            if tensors is not None and tensors[0].device != device:
                setattr(self, name, [t.to(device) for t in tensors])


@torch.no_grad()
def _copy(params: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    torch._foreach_copy_(params, values)
