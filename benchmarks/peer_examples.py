"""The second reference: pytorch/examples' word_language_model training program, rewritten here
(not copied) on our data, for `peers.py` to time beside `scripts/train.py`.

    python benchmarks/peer_examples.py --model lstm --epochs 3 --out run.json [--threads 1]

What it keeps from that program, because that is what users of it run: an Embedding -> nn.RNN
(tanh) or nn.LSTM -> Linear model with log_softmax and NLL loss, encoder and decoder weights
uniform in +-0.1; the training split batchified into `batch` columns and read in `bptt`-step
windows with the state carried and detached; a plain SGD update `p -= lr * grad` after
`clip_grad_norm_`; a loss print every 200 batches (one `.item()` per batch, as it does); after
every epoch the validation split read as 10 streams, the whole model saved with `torch.save` when
it is the best so far and the learning rate divided by 4 when not; at the end the best model
reloaded and the test split scored. What differs from it: the corpus is the Time Machine as
characters with our preprocessing and splits (so both contenders read the same tokens), no
dropout, lr 1 and clip 1 (the chapter's settings, which `scripts/train.py` uses). It writes a
JSON with its training tokens/s (time inside the training loop only) and its perplexities.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


class Net(nn.Module):
    def __init__(self, kind: str, vocab: int, emb: int, hidden: int):
        super().__init__()
        self.kind, self.hidden = kind, hidden
        self.encoder = nn.Embedding(vocab, emb)
        self.rnn = nn.LSTM(emb, hidden) if kind == "lstm" else nn.RNN(emb, hidden,
                                                                        nonlinearity="tanh")
        self.decoder = nn.Linear(hidden, vocab)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, x: torch.Tensor, state):
        out, state = self.rnn(self.encoder(x), state)
        return F.log_softmax(self.decoder(out).view(-1, self.decoder.out_features), 1), state

    def zero_state(self, rows: int):
        h = torch.zeros(1, rows, self.hidden)
        return (h, h.clone()) if self.kind == "lstm" else h


def columns(ids: torch.Tensor, rows: int) -> torch.Tensor:
    """(length // rows, rows): each column a contiguous stretch of the split."""
    n = len(ids) // rows
    return ids[: n * rows].view(rows, n).t().contiguous()


def window(source: torch.Tensor, i: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = min(bptt, len(source) - 1 - i)
    return source[i : i + n], source[i + 1 : i + 1 + n].reshape(-1)


def detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def evaluate(model: Net, source: torch.Tensor, bptt: int) -> float:
    model.eval()
    total, state = 0.0, model.zero_state(source.shape[1])
    with torch.no_grad():
        for i in range(0, len(source) - 1, bptt):
            x, y = window(source, i, bptt)
            out, state = model(x, state)
            total += len(x) * F.nll_loss(out, y).item()
    return total / (len(source) - 1)


def load_splits(path: Path, max_tokens: int | None) -> tuple[dict[str, torch.Tensor], int]:
    """0.9 / 0.05 / 0.05 of the first `max_tokens` (all if None), in order, as our datamodule."""
    from rnnlab.text.vocab import encode_corpus, preprocess

    ids, vocab = encode_corpus(preprocess(path.read_text(), "letters"), "char")
    ids = ids.long()[:max_tokens]
    a, b = int(0.9 * len(ids)), int(0.95 * len(ids))
    return {"train": ids[:a], "val": ids[a:b], "test": ids[b:]}, len(vocab)


def peer_arguments(description: str) -> argparse.ArgumentParser:
    """The options every peer program takes (peer_book.py's too): epochs, batch, hidden size,
    threads, a corpus cap, the corpus and the JSON to write."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=None, help="cap the corpus (smoke runs)")
    p.add_argument("--path", type=Path, default=ROOT / "outputs" / "data" / "timemachine.txt")
    p.add_argument("--out", type=Path, required=True)
    return p


def main() -> None:
    p = peer_arguments(__doc__.splitlines()[0])
    p.add_argument("--model", choices=["rnn", "lstm"], default="lstm")
    p.add_argument("--bptt", type=int, default=35)
    p.add_argument("--emb", type=int, default=64)
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--clip", type=float, default=1.0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    splits, vocab = load_splits(args.path, args.max_tokens)
    train = columns(splits["train"], args.batch)
    val, test = columns(splits["val"], 10), columns(splits["test"], 10)
    model = Net(args.model, vocab, args.emb, args.hidden)
    lr, best, tokens, seconds = args.lr, math.inf, 0, 0.0
    ckpt = Path(tempfile.mkdtemp()) / "model.pt"
    for epoch in range(args.epochs):
        model.train()
        state, total, t0 = model.zero_state(args.batch), 0.0, time.perf_counter()
        for batch, i in enumerate(range(0, len(train) - 1, args.bptt)):
            x, y = window(train, i, args.bptt)
            state = detach(state)
            model.zero_grad()
            out, state = model(x, state)
            loss = F.nll_loss(out, y)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            with torch.no_grad():
                for w in model.parameters():
                    w.add_(w.grad, alpha=-lr)
            total += loss.item()
            tokens += y.numel()
            if batch % 200 == 199:
                print(f"epoch {epoch + 1} batch {batch + 1} loss {total / 200:.3f}", flush=True)
                total = 0.0
        seconds += time.perf_counter() - t0
        val_loss = evaluate(model, val, args.bptt)
        print(f"epoch {epoch + 1} val ppl {math.exp(val_loss):.3f}", flush=True)
        if val_loss < best:
            torch.save(model, ckpt)
            best = val_loss
        else:
            lr /= 4.0
    model = torch.load(ckpt, weights_only=False)
    model.rnn.flatten_parameters()
    test_loss = evaluate(model, test, args.bptt)
    os.remove(ckpt)
    args.out.write_text(json.dumps({
        "model": args.model, "epochs": args.epochs, "train_tokens": tokens,
        "train_seconds": seconds, "tokens_per_s": tokens / seconds,
        "best_val_ppl": math.exp(best), "test_ppl": math.exp(test_loss)}))


if __name__ == "__main__":
    main()
