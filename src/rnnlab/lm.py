"""The language-model LightningModule: input encoding, a recurrent core, an output head.

    model = LanguageModel(core=partial(ScratchRNN, num_hiddens=512), vocab_size=28,
                          optimizer=partial(torch.optim.SGD, lr=1.0))
    trainer.fit(model, datamodule)                       # logs train/ppl, val/ppl, train/grad_norm

Perplexity is exp(mean token cross-entropy) over a whole split: losses are summed per token as
tensors during the epoch and divided once at its end (never a mean of per-batch perplexities).
Hidden state: with sequential partitioning it is carried across minibatches and detached (so the
window is the truncation point); with random sampling each minibatch starts from zeros. It is
reset at every epoch start and before validation and test.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.cores import ScratchRNN, State, detach_state
from rnnlab.onednn import linear

log = logging.getLogger(__name__)
LOG_FLOAT_MAX = math.log(torch.finfo(torch.float32).max)  # exp() of a larger loss overflows


def clip_grad_norm_book(params: list[nn.Parameter], theta: float,
                        norm: torch.Tensor | None = None) -> torch.Tensor:
    """D2L's hand-written clipping: scale all gradients by min(1, theta / ||g||).
    The min is a tensor op, so the step never waits on the device to compare norms. `norm`, when
    the caller has it already, saves a second pass over the gradients."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if norm is None:
        norm = torch.sqrt(sum(torch.sum(g * g) for g in grads))
    scale = torch.clamp(theta / norm, max=1.0)
    for g in grads:
        g.mul_(scale)
    return norm


def global_grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def _exp(x: float) -> float:
    return math.exp(x) if x < 709.0 else math.inf  # math.exp raises beyond


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
    ):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout={dropout} must be in [0, 1)")
        if not 0.0 < keep_prob <= 1.0:
            raise ValueError(f"bptt.keep_prob={keep_prob} must be in (0, 1]")
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
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.carry_state = True  # set from the datamodule's sampling in setup()
        self.vocab = None  # the datamodule's Vocab; saved into every checkpoint
        self.token, self.preprocess = "char", "letters"  # how text becomes tokens (generation)
        self.run_config: dict | None = None  # the resolved Hydra config, saved into checkpoints
        self._state: State | None = None
        self._reset_run_stats()
        self._start_epoch_stats()

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
        if not self.locked_dropout:
            return F.dropout(x, self.dropout, True)
        mask = x.new_empty(1, *x.shape[1:]).bernoulli_(1 - self.dropout) / (1 - self.dropout)
        return x * mask

    # ---- training -----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None:
            self.carry_state = dm.sampling == "sequential"
            self.vocab, self.token, self.preprocess = dm.vocab, dm.token, dm.preprocess_mode
            if self.vocab is not None and len(self.vocab) != self.vocab_size:
                raise ValueError(f"the model has {self.vocab_size} outputs but the data's "
                                 f"vocabulary has {len(self.vocab)} tokens")

    def _reset_run_stats(self) -> None:
        self.steps_seen, self.clipped_steps, self.max_grad_norm = 0, 0, 0.0
        self.diverged_at: int | None = None
        self._grad_norm: torch.Tensor | None = None

    def _step_state(self, X: torch.Tensor, carry: bool) -> State:
        if carry and self._state is not None and self._state[0].shape[-2] == X.shape[0]:
            # truncated BPTT: the state goes on, the gradient stops at the window boundary
            return tuple(s.to(self.device) for s in detach_state(self._state))
        return tuple(s.to(self.device) for s in self.begin_state(X.shape[0]))

    def _loss(self, batch, carry: bool) -> tuple[torch.Tensor, int]:
        X, Y = batch
        logits, state = self(X, self._step_state(X, carry))
        self._state = state if carry else None
        return F.cross_entropy(logits, Y.T.reshape(-1).long()), Y.numel()

    def _start_epoch_stats(self) -> None:
        # A step only appends its loss and gradient norm (tensors: no op, no device sync); they
        # are reduced when read. _loss_sum/_tokens hold what a mid-epoch resume restored.
        self._losses: list[tuple[torch.Tensor, int]] = []
        self._norms: list[torch.Tensor] = []
        self._loss_sum, self._tokens, self._train_time = 0.0, 0, 0.0
        self._epoch_clipped, self._epoch_steps = 0, 0
        self._step_t0 = self._batch_t0 = time.perf_counter()

    def _epoch_loss(self) -> tuple[float, int]:
        """This epoch's summed token loss and token count so far."""
        if not self._losses:
            return self._loss_sum, self._tokens
        losses = torch.stack([loss for loss, _ in self._losses]).double()
        counts = torch.tensor([n for _, n in self._losses], dtype=torch.float64,
                              device=losses.device)
        return self._loss_sum + float(losses @ counts), self._tokens + int(counts.sum())

    def _fold_norms(self) -> None:
        """Fold the gradient norms recorded since the last call into the epoch and run totals."""
        if not self._norms:
            return
        norms = torch.stack(self._norms)
        bad = ~torch.isfinite(norms)
        if bad.any():  # on a GPU, found here rather than at its step
            first = int(bad.nonzero()[0])
            self._diverge(f"gradient norm is {float(norms[first])}",
                          step=self.global_step - len(norms) + 1 + first)
            norms = norms[:first]
            if not len(norms):
                self._norms = []
                return
        theta = self.trainer.gradient_clip_val if self._trainer is not None else None
        clipped = int((norms > theta).sum()) if theta else 0
        self._epoch_clipped += clipped
        self._epoch_steps += len(norms)
        self.clipped_steps += clipped
        self.steps_seen += len(norms)
        self.max_grad_norm = max(self.max_grad_norm, float(norms.max()))
        self._norms = []

    def on_train_epoch_start(self) -> None:
        self._state = None
        self._start_epoch_stats()

    def training_step(self, batch, batch_idx: int):
        loss, n = self._loss(batch, self.carry_state)
        # NaN, or a perplexity that overflows, is divergence
        if self._check_now() and not loss < LOG_FLOAT_MAX:
            self._diverge(f"loss is {loss.item():.4g}, perplexity overflows")
            return None  # Lightning skips the update
        self._losses.append((loss.detach(), n))
        now = time.perf_counter()
        if self._logging_step():
            self.log("train/ppl", torch.exp(loss.detach()), prog_bar=True)
            self.log("train/tokens_per_s", n / max(now - self._step_t0, 1e-9))
        self._step_t0 = now
        return loss

    def _logging_step(self) -> bool:
        """Whether the trainer writes this step's metrics (every `log_every_n_steps`). Each
        `self.log` walks Lightning's result collection (~0.2 ms, 5-10% of a small step), so the
        per-step values are handed over on those steps only; totals are kept as tensors."""
        every = self.trainer.log_every_n_steps
        return bool(every) and (self.global_step + 1) % every == 0

    def _check_now(self) -> bool:
        """Divergence checks read a scalar: free on a CPU, but a device sync on a GPU, where they
        run on logging steps only (training stops up to log_every_n_steps later there)."""
        return self.device.type == "cpu" or self._logging_step()

    def _diverge(self, why: str, step: int | None = None) -> None:
        step = self.global_step if step is None else step
        self.diverged_at = step
        last = _exp(float(self._losses[-1][0])) if self._losses else float("nan")
        log.error("training diverged at step %d (%s); last finite train perplexity %.4g; "
                  "stopping, the best checkpoint so far is kept", step, why, last)
        self.trainer.should_stop = True

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.diverged_at is not None:  # the step was skipped: there are no gradients
            return
        # before clipping, as the ablation needs; clipping reuses it
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norm = self._grad_norm = global_grad_norm(grads)
        if self.device.type == "cpu":  # reading the norm is free: check every step
            if not norm < math.inf:
                self._diverge(f"gradient norm is {norm.item()}")
            else:
                self._norms.append(norm)
        else:  # a GPU: one sync per log_every_n_steps, in _fold_norms
            self._norms.append(norm)
            if self._logging_step():
                self._fold_norms()
            # until then a non-finite step must not reach the weights: zero it, without a sync
            finite = torch.isfinite(norm)
            for g in grads:
                torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0).mul_(finite)
            self._grad_norm = torch.where(finite, norm, torch.zeros_like(norm))
        if self.diverged_at is not None:
            for p in self.parameters():  # make the optimizer skip this step
                p.grad = None
            return
        if self._logging_step():
            self.log("train/grad_norm", norm)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        if not gradient_clip_val or self.diverged_at is not None:
            return
        params = [p for p in self.parameters() if p.grad is not None]
        if self.book_style:
            clip_grad_norm_book(params, gradient_clip_val, norm=self._grad_norm)
        elif gradient_clip_algorithm in (None, "norm"):  # torch's, with the norm we have
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, self._grad_norm)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._batch_t0 = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self._train_time += time.perf_counter() - self._batch_t0

    def epoch_stats(self) -> dict[str, float]:
        """This epoch so far: token-weighted train perplexity and training tokens/s (the time
        spent in training steps, validation excluded)."""
        loss_sum, tokens = self._epoch_loss()
        if not tokens:
            return {}
        self._fold_norms()
        stats = {"train/ppl_epoch": _exp(loss_sum / tokens),
                 "train/tokens_per_s_epoch": tokens / max(self._train_time, 1e-9)}
        if self.trainer.gradient_clip_val and self._epoch_steps:
            stats["train/clipped"] = self._epoch_clipped / self._epoch_steps
        return stats

    def on_train_epoch_end(self) -> None:
        for key, value in self.epoch_stats().items():
            self.log(key, value)

    # ---- evaluation ---------------------------------------------------------------------------
    def _eval_start(self) -> None:
        # a validation in the middle of an epoch must not reset the carried training state
        self._train_state, self._state = self._state, None
        self._eval_sum, self._eval_tokens = torch.zeros((), device=self.device), 0

    def _eval_step(self, batch) -> None:
        loss, n = self._loss(batch, carry=True)  # eval windows are sequential: carry the state
        self._eval_sum += loss * n
        self._eval_tokens += n

    def _eval_end(self, split: str) -> None:
        if self._eval_tokens:
            self.log(f"{split}/ppl", torch.exp(self._eval_sum / self._eval_tokens), prog_bar=True)
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
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vocab"] = self.vocab.to_dict() if self.vocab is not None else None
        checkpoint["run_config"] = self.run_config
        self._fold_norms()
        loss_sum, tokens = self._epoch_loss()
        checkpoint["run_stats"] = {"steps_seen": self.steps_seen,
                                   "clipped_steps": self.clipped_steps,
                                   "max_grad_norm": self.max_grad_norm}
        # what an interrupted epoch needs to go on exactly: the carried hidden state, the
        # epoch's loss sums, and the random streams (dropout, randomized truncation)
        checkpoint["epoch_state"] = {
            "state": self._state, "loss_sum": loss_sum, "tokens": tokens,
            "clipped": self._epoch_clipped, "steps": self._epoch_steps,
            "train_time": self._train_time,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device)
            if self.device.type == "cuda" else None}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        stats = checkpoint.get("run_stats") or {}
        self.steps_seen = stats.get("steps_seen", 0)
        self.clipped_steps = int(stats.get("clipped_steps", 0))
        self.max_grad_norm = float(stats.get("max_grad_norm", 0.0))
        epoch = checkpoint.get("epoch_state")
        if epoch:
            self._state, self._tokens = epoch["state"], epoch["tokens"]
            self._loss_sum, self._losses, self._norms = float(epoch["loss_sum"]), [], []
            self._epoch_clipped, self._epoch_steps = epoch.get("clipped", 0), epoch.get("steps", 0)
            self._train_time = epoch.get("train_time", 0.0)
            torch.set_rng_state(epoch["rng"])
            if epoch["cuda_rng"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(epoch["cuda_rng"])

    def run_stats(self) -> dict:
        """Totals over the whole run for summary.json (one sync, at the end)."""
        self._fold_norms()
        return {"clipped_fraction": self.clipped_steps / max(self.steps_seen, 1),
                "max_grad_norm": self.max_grad_norm,
                "diverged": self.diverged_at is not None, "diverged_at_step": self.diverged_at}
