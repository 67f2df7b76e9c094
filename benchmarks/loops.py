"""The training loops the benchmark times, each on the same batches: the book's plain loop (the
reference every ratio is taken against), a model's step in a plain PyTorch loop, and the same
module through Lightning's real training step.

    from loops import MODELS, batches, bench_book, bench_lightning, bench_plain, make_model
"""

from __future__ import annotations

import tempfile
import time
from functools import partial

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from rnnlab.models.clipping import clip_grad_norm_book
from rnnlab.models.cores import ScratchRNN, TorchRNN
from rnnlab.models.lm import LanguageModel

MODELS = {
    "rnn_scratch": partial(ScratchRNN, fast=True),
    "rnn_scratch_book": partial(ScratchRNN, fast=False),
    "rnn": partial(TorchRNN, "rnn"),
    "rnn_torch_kernel": partial(TorchRNN, "rnn", cpu_kernel="torch"),  # nn.RNN's own CPU kernel
    "gru": partial(TorchRNN, "gru"),
    "lstm": partial(TorchRNN, "lstm"),
}


def batches(corpus: torch.Tensor, batch_size: int, num_steps: int, count: int, device: str):
    """`count` sequential (X, Y) minibatches cycling over the corpus, already on the device."""
    stream = (len(corpus) - 1) // batch_size
    Xs = corpus[: stream * batch_size].view(batch_size, stream)
    Ys = corpus[1 : stream * batch_size + 1].view(batch_size, stream)
    n = stream // num_steps
    return [(Xs[:, (i % n) * num_steps : (i % n + 1) * num_steps].to(device),
             Ys[:, (i % n) * num_steps : (i % n + 1) * num_steps].to(device))
            for i in range(count)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def book_weights(vocab: int, hidden: int, device: str, generator: torch.Generator
                 ) -> list[torch.Tensor]:
    """The book's parameters W_xh, W_hh, b_h, W_hq, b_q: N(0, 0.01^2) matrices, zero biases."""
    normal = lambda *s: (torch.randn(*s, generator=generator) * 0.01).to(device).requires_grad_()  # noqa
    return [normal(vocab, hidden), normal(hidden, hidden),
            torch.zeros(hidden, device=device, requires_grad=True), normal(hidden, vocab),
            torch.zeros(vocab, device=device, requires_grad=True)]


def book_step(params: list[torch.Tensor], X: torch.Tensor, Y: torch.Tensor,
              state: torch.Tensor | None, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the book's training loop (D2L 8.5): one-hot inputs, an output layer at every
    step, the book's norm clipping at 1, SGD at lr 1. Returns the (graph-free) mean loss and the
    state for the next minibatch."""
    W_xh, W_hh, b_h, W_hq, b_q = params
    H = torch.zeros(X.shape[0], W_hh.shape[0], device=X.device) if state is None \
        else state.detach()
    outputs = []
    for x in F.one_hot(X.T.long(), vocab).float():
        H = torch.tanh(x @ W_xh + H @ W_hh + b_h)
        outputs.append(H @ W_hq + b_q)
    loss = F.cross_entropy(torch.cat(outputs), Y.T.reshape(-1).long())
    loss.backward()
    with torch.no_grad():
        clip_grad_norm_book(params, 1.0)
        for p in params:
            p -= 1.0 * p.grad
            p.grad.zero_()
    return loss.detach(), H


def bench_book(data, vocab: int, hidden: int, warmup: int, device: str) -> list[float]:
    """The book's training loop (D2L 8.5), one-hot input and an output layer at every step."""
    params = book_weights(vocab, hidden, device, torch.Generator().manual_seed(0))
    state, times = None, []
    for X, Y in data:
        t0 = time.perf_counter()
        _, state = book_step(params, X, Y, state, vocab)
        sync(device)
        times.append(time.perf_counter() - t0)
    return times[warmup:]


COMPILE_LABELS = {"default": "+compile", "reduce-overhead": "+cudagraphs"}
PRECISION_LABELS = {"32-true": "", "bf16-mixed": "+bf16"}


def make_model(name: str, vocab: int, hidden: int, compile_mode: str | None) -> LanguageModel:
    model = LanguageModel(core=partial(MODELS[name], num_hiddens=hidden), vocab_size=vocab,
                          optimizer=partial(torch.optim.SGD, lr=1.0))
    if compile_mode:  # "reduce-overhead" replays the core's forward and backward as CUDA graphs
        model.core = torch.compile(model.core, mode=compile_mode)
    return model


def new_graph_step(model: LanguageModel) -> None:
    """A CUDA graph's replay overwrites the previous replay's outputs, the carried hidden state
    among them: copy the state out, then tell torch a new step begins."""
    if model._state is not None:
        model._state = tuple(s.clone() for s in model._state)
    torch.compiler.cudagraph_mark_step_begin()


class GraphSteps(pl.Callback):
    def on_train_batch_start(self, trainer, module, *args) -> None:
        new_graph_step(module)


def bench_plain(model: LanguageModel, data, warmup: int, device: str,
                graphs: bool = False, precision: str = "32-true") -> list[float]:
    """The module's own forward/loss in a bare loop: what Lightning's overhead is measured on."""
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    times = []
    for batch in data:
        t0 = time.perf_counter()
        if graphs:
            new_graph_step(model)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16,
                            enabled=precision == "bf16-mixed"):  # as Lightning's plugin does
            loss, _ = model._loss(batch, carry=True)
        loss.backward()
        if model.book_style:
            clip_grad_norm_book(list(model.parameters()), 1.0)
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times[warmup:]


class StepTimer(pl.Callback):
    """Seconds from one batch start to the next: the step plus all of Lightning's work around
    it (data fetching, hooks, logging)."""

    def __init__(self, device: str):
        self.device, self.times, self._t0 = device, [], None

    def on_train_batch_start(self, *args) -> None:
        sync(self.device)
        now = time.perf_counter()
        if self._t0 is not None:
            self.times.append(now - self._t0)
        self._t0 = now


def bench_lightning(model: LanguageModel, data, warmup: int, device: str,
                    graphs: bool = False, precision: str = "32-true") -> list[float]:
    """The real training step: Trainer, TensorBoard logging every 10 steps, clipping at 1."""
    timer = StepTimer(device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(
            accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1,
            max_steps=len(data) + 1, max_epochs=-1, gradient_clip_val=1.0, log_every_n_steps=10,
            logger=pl.loggers.TensorBoardLogger(tmp, name="tb", default_hp_metric=False),
            callbacks=[timer] + [GraphSteps()] * graphs, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
            num_sanity_val_steps=0, precision=precision)
        loader = torch.utils.data.DataLoader(data + data[-1:], batch_size=None, shuffle=False,
                                             pin_memory=device.startswith("cuda"))  # as train.py
        trainer.fit(model, train_dataloaders=loader)
    return timer.times[warmup:]  # times[k]: from step k's start to step k + 1's
