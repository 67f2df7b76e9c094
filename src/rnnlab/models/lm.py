"""The language-model LightningModule: input encoding, a recurrent core, an output head.

    model = LanguageModel(core=partial(ScratchRNN, num_hiddens=512), vocab_size=28,
                          optimizer=partial(torch.optim.SGD, lr=1.0))
    trainer = pl.Trainer(callbacks=[TrainingMonitor()], gradient_clip_val=1.0)
    trainer.fit(model, datamodule)                       # val/ppl; the monitor logs train/*

This is chapter 8's model and nothing else: tokens are encoded (one-hot, or an embedding), a core
(`models.cores`) turns them into hidden states, a linear head into logits, and the loss is the
token cross-entropy. The hidden-state policy: with sequential partitioning the state is carried
across minibatches and detached (so the window is the truncation point); with random sampling
each minibatch starts from zeros. It is reset at every epoch start and before validation and
test, and training's carried state is put back after a validation. Statistics and the divergence
guard live in `rnnlab.training.monitor`, held-out sums in `models.perplexity`.

Under DDP (`training.distributed`) each rank holds a block of the minibatch's rows and their carried
state; dropout masks are drawn for the whole global batch on every rank (same seed, same draws)
and each rank keeps its rows, and checkpoints hold the state of all rows, so a run is the same
as one process and resumes on any world size that divides the batch.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.config.checks import language_model
from rnnlab.kernels.choice import linear, stream_threads
from rnnlab.models.clipping import clip_grad_norm_book, global_grad_norm
from rnnlab.models.cores import ScratchRNN, State, detach_state
from rnnlab.models.perplexity import HeldOutScore
from rnnlab.models.streams import parallel_stream

log = logging.getLogger(__name__)


class LanguageModel(pl.LightningModule):
    def __init__(
        self,
        core: Callable[..., nn.Module],
        vocab_size: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable | None = None,
        embedding_dim: int | None = None,
        dropout: float = 0.0,
        locked_dropout: bool = False,
        keep_prob: float = 1.0,
        eval_chunks: int = 16,
        eval_burn_in: int = 128,
    ):
        super().__init__()
        # rnnlab.config.checks: before torch too
        language_model(dropout, keep_prob, embedding_dim, eval_chunks, eval_burn_in)
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim) if embedding_dim else None
        self.core = core(input_size=embedding_dim or vocab_size)
        self.head = nn.Linear(self.core.num_hiddens, vocab_size)
        self.book_style = isinstance(self.core, ScratchRNN)
        if self.book_style:  # the book's W_hq ~ N(0, 0.01^2), b_q = 0
            nn.init.normal_(self.head.weight, std=0.01)
            nn.init.zeros_(self.head.bias)
            self.core.keep_prob = keep_prob
        elif keep_prob < 1.0:
            log.warning("bptt.keep_prob=%s applies to model=rnn_scratch only; ignored", keep_prob)
        self.dropout, self.locked_dropout = dropout, locked_dropout
        # one held-out stream read as eval_chunks rows at once (models.streams: same numbers)
        self.eval_chunks, self.eval_burn_in = eval_chunks, eval_burn_in
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.carry_state = True  # set from the datamodule's sampling in setup()
        self.vocab = None  # the datamodule's Vocab; saved into every checkpoint
        self.token, self.preprocess = "char", "letters"  # how text becomes tokens (generation)
        self.run_config: dict | None = None  # the resolved Hydra config, saved into checkpoints
        self.grad_norm: torch.Tensor | None = None  # this step's, when a TrainingMonitor has it
        self.rows = (0, 1)  # (rank, world size): this process's block of every minibatch
        self._state: State | None = None

    # ---- the network --------------------------------------------------------------------------
    def forward(self, X: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """X: (B, T) token indices -> logits (T*B, V) in time-major order, new state."""
        inputs = X.T
        if self.embedding is not None:
            inputs = self.drop(self.embedding(inputs.long()))
        outputs, state = self.core(inputs, state)
        outputs = self.drop(outputs)
        if self.book_style and not self.core.fast:  # the book: the output layer at every step
            return torch.cat([self.head(o) for o in outputs]), state
        return linear(outputs.reshape(-1, outputs.shape[-1]), self.head.weight,
                      self.head.bias), state

    def begin_state(self, batch_size: int) -> State:
        return self.core.begin_state(batch_size)

    def drop(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout on (T, B, F); locked (variational) dropout keeps one mask for all steps."""
        if not self.training or not self.dropout:
            return x
        # the global batch's mask, this rank's rows of it: under DDP every rank draws what one
        # process draws (F.dropout's draws could not be split by rows)
        rank, world = self.rows
        T, B = 1 if self.locked_dropout else x.shape[0], x.shape[1]
        mask = x.new_empty(T, B * world, *x.shape[2:]).bernoulli_(1 - self.dropout)
        return x * (mask[:, rank * B : (rank + 1) * B] / (1 - self.dropout))

    # ---- loss and hidden-state policy ---------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.rows = (self.trainer.global_rank, self.trainer.world_size)
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None:
            self.carry_state = dm.sampling == "sequential"
            self.vocab, self.token, self.preprocess = dm.vocab, dm.token, dm.preprocess_mode
            if self.vocab is not None and len(self.vocab) != self.vocab_size:
                raise ValueError(f"the model has {self.vocab_size} outputs but the data's "
                                 f"vocabulary has {len(self.vocab)} tokens")

    def _step_state(self, X: torch.Tensor, carry: bool) -> State:
        if carry and self._state is not None and self._state[0].shape[-2] == X.shape[0]:
            # truncated BPTT: the state goes on, the gradient stops at the window boundary
            return tuple(s.to(self.device) for s in detach_state(self._state))
        return tuple(s.to(self.device) for s in self.begin_state(X.shape[0]))

    def _loss(self, batch, carry: bool) -> tuple[torch.Tensor, int]:
        X, Y = batch
        if not self.training and X.shape[0] == 1:  # one held-out stream
            logits, state = parallel_stream(self, X, self._step_state(X, carry),
                                            self.eval_chunks, self.eval_burn_in)
        else:
            logits, state = self(X, self._step_state(X, carry))
        self._state = state if carry else None
        return F.cross_entropy(logits, Y.T.reshape(-1).long()), Y.numel()

    def on_train_epoch_start(self) -> None:
        self._state = None

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._loss(batch, self.carry_state)[0]

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        norm, self.grad_norm = self.grad_norm, None
        params = [p for p in self.parameters() if p.grad is not None]
        if not gradient_clip_val or not params:  # off, or a skipped step
            return
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        elif self.book_style:
            clip_grad_norm_book(params, gradient_clip_val, norm=norm)
        else:  # torch's, with the norm the monitor measured before clipping
            if norm is None:
                norm = global_grad_norm([p.grad for p in params])
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm)

    # ---- evaluation: held-out streams, read with the state carried ----------------------------
    def _eval_start(self) -> None:
        # a validation in the middle of an epoch must not reset the carried training state
        self._train_state, self._state = self._state, None
        self.score = HeldOutScore(self.device)

    def _eval_step(self, batch) -> None:
        # float32 under bf16 training too: the same scores as the stream evaluations (dynamic,
        # n-gram mix) of the same weights; one stream at batch 1 gains nothing from bf16
        with torch.autocast(self.device.type, enabled=False), \
                stream_threads(batch[0].shape[0], self.device):
            self.score.add(*self._loss(batch, carry=True))

    def _eval_end(self, split: str) -> None:
        trainer = self._trainer
        if trainer is not None:
            dm = getattr(trainer, "datamodule", None)
            replicated = dm is not None and dm.rows(split)[1] < trainer.world_size
            self.score.reduce(trainer.strategy, replicated, trainer.global_rank)
        if self.score.tokens:  # the same value on every rank: sync_dist's mean leaves it as is
            self.log(f"{split}/ppl", self.score.perplexity(), prog_bar=True, sync_dist=True)
        self._state = getattr(self, "_train_state", None)

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    # ---- optimisation and checkpoints ---------------------------------------------------------
    def configure_optimizers(self):
        factory, kwargs = self.optimizer_factory, {}
        if self.device.type == "cuda" and "fused" in inspect.signature(factory).parameters \
                and getattr(factory, "keywords", {}).get("fused") is None:
            kwargs["fused"] = True  # skips a non-finite step on the GPU without a sync
        optimizer = factory(params=self.parameters(), **kwargs)
        if self.scheduler_factory is None:
            return optimizer
        kwargs = {}
        if "total_steps" in inspect.signature(self.scheduler_factory).parameters and \
                getattr(self.scheduler_factory, "keywords", {}).get("total_steps") is None:
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)  # the budget
        scheduler = self.scheduler_factory(optimizer=optimizer, **kwargs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vocab"] = self.vocab.to_dict() if self.vocab is not None else None
        checkpoint["run_config"] = self.run_config
        # what an interrupted epoch needs to go on exactly: the carried hidden state and the
        # random streams (dropout, randomized truncation)
        checkpoint["epoch_state"] = {
            "state": self._all_rows(self._state), "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device)
            if self.device.type == "cuda" else None}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        epoch = checkpoint.get("epoch_state")
        if epoch:
            self._state = self._my_rows(epoch["state"])
            torch.set_rng_state(epoch["rng"])
            if epoch["cuda_rng"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(epoch["cuda_rng"])

    # under DDP a checkpoint holds every row's carried state (rank 0 writes it): gathered on save,
    # each rank's block taken on load, so a run resumes on any world size that divides the batch
    def _all_rows(self, state: State | None) -> State | None:
        if state is None or self._trainer is None or self.trainer.world_size == 1:
            return state
        return tuple(torch.cat(self.all_gather(s).unbind(0), dim=-2) for s in state)

    def _my_rows(self, state: State | None) -> State | None:
        if state is None or self._trainer is None or self.trainer.world_size == 1:
            return state
        rank, world = self.trainer.global_rank, self.trainer.world_size
        rows = state[0].shape[-2] // world
        return tuple(s.narrow(-2, rank * rows, rows).clone() for s in state)
