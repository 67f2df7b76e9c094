"""Minibatches of language-model windows (D2L 8.3.4) and the LightningDataModule.

    dm = TextDataModule(path=None, data_dir="outputs/data", sampling="sequential")
    dm.prepare_data(); dm.setup()
    for X, Y in dm.train_dataloader(): ...              # X, Y: (batch_size, num_steps), Y = X + 1

One epoch is a *plan*: a list of minibatches, each given by `batch_size` start positions and one
window length. Both sampling strategies and all three BPTT window modes are plans:
- random sampling: from a random offset, the text is cut into non-overlapping windows whose order
  is shuffled, so adjacent minibatches are not adjacent in the text;
- sequential partitioning: from a random offset, the text is split into `batch_size` contiguous
  streams and minibatch i+1 row j continues exactly where minibatch i row j ended;
- windows `regular` (all `num_steps`), `randomized` (lengths drawn around `num_steps`, mean exactly
  `num_steps`), `full` (one window per stream: the whole stream).
The number of minibatches is the same every epoch, so Lightning's progress and checkpoints agree.

Under DDP every rank draws the same plan and takes its own contiguous block of rows of every
minibatch (`shard`): the global minibatch is still `batch_size` rows, and with sequential
partitioning a rank's rows continue exactly where its previous rows stopped.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rnnlab.config.checks import SAMPLING, text_data
from rnnlab.text.corpus import read_text, resolve_corpus
from rnnlab.text.vocab import Vocab, encode_corpus, kept_share, preprocess

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """One minibatch: rows start at `starts` and are `length` tokens long."""

    starts: torch.Tensor
    length: int


def window_lengths(count: int, num_steps: int, mode: str, gen: torch.Generator) -> list[int]:
    """`count` window lengths with mean exactly `num_steps` (randomized: in [n/2, 3n/2])."""
    if mode != "randomized" or num_steps < 2:
        return [num_steps] * count
    half = num_steps // 2
    # antithetic pairs (n+d, n-d) keep the total fixed, so the epoch covers the same text
    devs = torch.randint(-half, half + 1, ((count + 1) // 2,), generator=gen)
    lengths = torch.stack([num_steps + devs, num_steps - devs], 1).flatten()[:count]
    if count % 2:
        lengths[-1] = num_steps
    return lengths[torch.randperm(count, generator=gen)].tolist()


def plan_epoch(
    num_tokens: int,
    batch_size: int,
    num_steps: int,
    sampling: str,
    windows: str = "regular",
    gen: torch.Generator | None = None,
) -> list[Window]:
    """The minibatches of one epoch over a corpus of `num_tokens` (Y needs one token beyond X)."""
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    offset = int(torch.randint(0, num_steps, (1,), generator=gen))
    # size the epoch for the largest offset, so every epoch has the same number of batches
    usable = num_tokens - 1 - (num_steps - 1)
    if windows == "full":
        stream = (num_tokens - 1 - offset) // batch_size
        starts = offset + torch.arange(batch_size) * stream
        return [Window(starts, stream)] if stream > 0 else []
    if sampling == "sequential":
        stream = usable // batch_size
        count = stream // num_steps
        lengths = window_lengths(count, num_steps, windows, gen)
        bases = offset + torch.arange(batch_size) * stream
        plan, pos = [], 0
        for length in lengths:
            plan.append(Window(bases + pos, length))
            pos += length
        return plan
    if sampling == "random":
        count = usable // (batch_size * num_steps)
        lengths = window_lengths(count, num_steps, windows, gen)
        # lay batch_size windows of each minibatch's length along the text in a random order
        owner = torch.arange(count).repeat_interleave(batch_size)
        owner = owner[torch.randperm(len(owner), generator=gen)]
        sizes = torch.tensor(lengths, dtype=torch.long)[owner]
        starts = offset + torch.cumsum(sizes, 0) - sizes
        order = torch.argsort(owner, stable=True).view(count, batch_size)
        return [Window(starts[order[b]], lengths[b]) for b in range(count)]
    raise ValueError(f"data.sampling={sampling!r} is unknown; use one of {list(SAMPLING)}")


def shard(w: Window, rank: int, world_size: int) -> Window:
    """Rank `rank`'s contiguous block of a minibatch's rows (the rows must divide evenly)."""
    rows = len(w.starts) // world_size
    return Window(w.starts[rank * rows : (rank + 1) * rows], w.length)


def eval_plan(num_tokens: int, batch_size: int, num_steps: int) -> list[Window]:
    """Deterministic sequential windows from offset 0: evaluation covers the whole split."""
    stream = (num_tokens - 1) // batch_size
    bases = torch.arange(batch_size) * stream
    plan = []
    for pos in range(0, stream, num_steps):
        plan.append(Window(bases + pos, min(num_steps, stream - pos)))
    return plan


class PlanSampler(Sampler):
    """Yields an epoch's Windows; Lightning calls `set_epoch`, which reshuffles from the seed."""

    def __init__(self, num_tokens, batch_size, num_steps, sampling, windows, seed, train=True,
                 rank: int = 0, world_size: int = 1):
        self.args = (num_tokens, batch_size, num_steps, sampling, windows)
        self.seed, self.train, self.epoch = seed, train, 0
        self.rank, self.world_size = rank, world_size  # this rank's block of every minibatch
        self.skip = 0  # windows to skip once, when resuming in the middle of an epoch
        self.consumed = 0  # windows of this epoch the training loop has taken

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self) -> list[Window]:
        num_tokens, batch_size, num_steps, sampling, windows = self.args
        if not self.train:
            return eval_plan(num_tokens, batch_size, num_steps)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return plan_epoch(num_tokens, batch_size, num_steps, sampling, windows, gen)

    def __iter__(self):
        # a generator: the plan is drawn at the first batch, after Lightning's set_epoch
        plan, self.consumed, self.skip = self.plan()[self.skip :], self.skip, 0
        for w in plan:
            yield shard(w, self.rank, self.world_size) if self.world_size > 1 else w

    def __len__(self) -> int:
        return len(self.plan())


class WindowDataset(Dataset):
    """Maps a Window to its (X, Y) minibatch by index arithmetic on the flat corpus."""

    def __init__(self, corpus: torch.Tensor):
        self.corpus = corpus

    def __getitem__(self, w: Window) -> tuple[torch.Tensor, torch.Tensor]:
        idx = w.starts[:, None] + torch.arange(w.length + 1)
        rows = self.corpus[idx]
        return rows[:, :-1], rows[:, 1:]

    def __len__(self) -> int:  # a dataset of windows has no fixed length; the sampler decides
        return len(self.corpus)


class TextDataModule(pl.LightningDataModule):
    """Corpus -> vocab (from the training split) -> train/val/test index tensors -> windows."""

    def __init__(
        self,
        path: str | None = None,
        data_dir: str = "outputs/data",
        preprocess: str = "letters",
        token: str = "char",
        min_freq: int = 0,
        reserved_tokens: list[str] | tuple = (),
        max_tokens: int | None = None,
        splits: tuple[float, float, float] = (0.9, 0.05, 0.05),
        batch_size: int = 32,
        num_steps: int = 35,
        sampling: str = "sequential",
        windows: str = "regular",
        num_workers: int = 0,
        seed: int = 0,
        eval_batch_size: int | None = None,
        pin_memory: bool | None = None,
        eval_num_steps: int | None = None,
    ):
        super().__init__()
        text_data(preprocess=preprocess, token=token, sampling=sampling, windows=windows,
                  batch_size=batch_size, num_steps=num_steps, eval_num_steps=eval_num_steps,
                  pin_memory=pin_memory, splits=splits)  # rnnlab.config.checks: before torch too
        self.path, self.data_dir = path, data_dir
        self.preprocess_mode, self.token = preprocess, token
        self.min_freq, self.reserved_tokens = min_freq, list(reserved_tokens)
        self.max_tokens, self.splits = max_tokens, tuple(splits)
        self.batch_size, self.num_steps = batch_size, num_steps
        self.sampling, self.windows = sampling, windows
        self.num_workers, self.seed = num_workers, seed
        self.eval_batch_size, self.pin_memory = eval_batch_size, pin_memory
        # held-out windows need no gradient and carry the state: their length changes no score,
        # only how many batches (each with Lightning's per-batch cost) a validation takes
        self.eval_num_steps = eval_num_steps or num_steps
        self.vocab: Vocab | None = None
        self.corpus_path: Path | None = None  # the file setup() read
        self.corpus: dict[str, torch.Tensor] = {}
        self.train_sampler: PlanSampler | None = None
        self._resume: dict | None = None

    def prepare_data(self) -> None:
        resolve_corpus(self.path, self.data_dir)  # downloads the default corpus once

    def setup(self, stage: str | None = None) -> None:
        if self.vocab is not None:
            return
        path = self.corpus_path = resolve_corpus(self.path, self.data_dir)
        raw = read_text(path)
        text = preprocess(raw, self.preprocess_mode)
        kept = kept_share(raw, text) if self.preprocess_mode != "none" else 1.0
        # the book's `letters` keeps a-z only: a text in another script all but disappears
        lost = "" if kept >= 0.5 else (
            f"data.preprocess={self.preprocess_mode} kept {kept:.0%} of the non-blank "
            f"characters of {path}: data.preprocess=unicode_letters keeps letters of any "
            f"script, data.preprocess=none the text as is")
        if lost:
            log.warning(lost)
        ids, vocab = encode_corpus(text, self.token, self.splits[0], self.min_freq,
                                   self.reserved_tokens, self.max_tokens)
        if len(vocab) <= 1 + len(self.reserved_tokens):
            raise ValueError(f"the vocabulary of {path} holds only <unk> and reserved tokens; "
                             + (lost or f"lower data.min_freq={self.min_freq} or use a larger "
                                        f"corpus"))
        n = len(ids)
        n_train, n_val = int(n * self.splits[0]), int(n * self.splits[1])
        self.corpus = {"train": ids[:n_train], "val": ids[n_train : n_train + n_val],
                       "test": ids[n_train + n_val :]}
        need = self.batch_size * (self.num_steps + 1) + self.num_steps
        if n_train < need:
            fix = lost or (
                f"lower data.batch_size={self.batch_size} or data.num_steps={self.num_steps}, "
                f"or use a larger corpus")
            raise ValueError(
                f"the training split of {path} has {n_train} tokens, fewer than one minibatch "
                f"needs ({need} = batch_size*(num_steps+1)+num_steps); {fix}")
        eval_bs = self.eval_batch_size or self.batch_size
        for split in ("val", "test"):
            if self.splits[("val", "test").index(split) + 1] > 0 and \
                    len(self.corpus[split]) < eval_bs + 1:
                raise ValueError(
                    f"the {split} split has {len(self.corpus[split])} tokens, fewer than "
                    f"eval batch size + 1 = {eval_bs + 1}; lower data.eval_batch_size or raise "
                    f"the {split} fraction in data.splits")
        self.vocab = vocab

    def describe(self) -> dict:
        """What the run is on: the file, preprocessing, token kind, vocabulary size, tokens per
        split and the share of each split's tokens that are <unk> (out of vocabulary: unseen in
        the training split, or rarer than data.min_freq)."""
        unk = {split: round(float((ids == self.vocab.unk).sum()) / len(ids), 6) if len(ids)
               else 0.0 for split, ids in self.corpus.items()}
        return {"path": str(self.corpus_path), "token": self.token,
                "preprocess": self.preprocess_mode, "vocab_size": len(self.vocab),
                "tokens": {split: len(ids) for split, ids in self.corpus.items()},
                "oov_rate": unk}

    def _loader(self, split: str) -> DataLoader:
        train = split == "train"
        batch_size = self.batch_size if train else self.eval_batch_size or self.batch_size
        num_steps = self.num_steps if train else self.eval_num_steps
        rank, world = self.rows(split)
        sampler = PlanSampler(len(self.corpus[split]), batch_size, num_steps,
                              self.sampling, self.windows, self.seed, train=train,
                              rank=rank, world_size=world)
        if split == "train":
            self.train_sampler = sampler
            if self._resume is not None:  # continue the interrupted epoch's plan where it stopped
                epoch, consumed = self._resume["epoch"], self._resume["consumed"]
                done = consumed >= len(sampler)
                sampler.set_epoch(epoch + 1 if done else epoch)
                sampler.skip = 0 if done else consumed
                self._resume = None
        # its own generator: creating an iterator must not draw from the global RNG, or a
        # resumed run's dropout masks would be shifted against an uninterrupted one
        return DataLoader(WindowDataset(self.corpus[split]), sampler=sampler, batch_size=None,
                          num_workers=self.num_workers, generator=torch.Generator(),
                          pin_memory=self._pin(),
                          persistent_workers=self.num_workers > 0,
                          multiprocessing_context="fork" if self.num_workers > 0 and
                          os.name == "posix" else None)

    def rows(self, split: str) -> tuple[int, int]:
        """(rank, world size) the split's minibatches are sharded over. Training rows always are
        (validation refuses a batch size the world size does not divide); held-out rows only when
        they divide evenly, else every rank reads all of them (the default eval_batch_size=1: one
        stream) and the model counts rank 0's sums alone."""
        trainer = self.trainer
        if getattr(trainer, "world_size", 1) == 1:  # no trainer, or one process
            return 0, 1
        rows = self.batch_size if split == "train" else self.eval_batch_size or self.batch_size
        if split != "train" and rows % trainer.world_size:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _pin(self) -> bool:
        """Pinned batches on a GPU: a copy from pageable memory first waits for the GPU to finish
        its queued work, a device sync per step; a pinned one is queued behind it."""
        if self.pin_memory is not None:
            return self.pin_memory
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    # Lightning stores a datamodule's state_dict in every checkpoint and restores it before it
    # asks for dataloaders: that is how a resumed run continues with the same data order.
    def state_dict(self) -> dict:
        s = self.train_sampler
        return {"epoch": s.epoch, "consumed": s.consumed} if s is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state or None

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        # called when the training loop takes a batch (not when a worker prefetches it)
        if self.train_sampler is not None and self.trainer is not None and self.trainer.training:
            self.train_sampler.consumed += 1
        return batch

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
