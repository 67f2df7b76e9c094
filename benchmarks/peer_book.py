"""The first reference as a whole program: the book's RNN from scratch (D2L 8.5, `train_ch8`),
rewritten here on our data, for `peers.py` to time beside `scripts/train.py model=rnn_scratch`.

    python benchmarks/peer_book.py --epochs 3 --out run.json [--threads 1]

What it keeps from the book's program, because that is what its readers run: the training split
cut by sequential partitioning at a random offset each epoch (`seq_data_iter_sequential`), the
state begun at the first minibatch of an epoch and detached after, the step of `benchmarks/loops.
bench_book` (one-hot inputs, the output layer at every step, the book's norm clipping at 1, SGD
at lr 1), the epoch's perplexity summed with one `float()` per minibatch as its `Accumulator`
does, and `predict_ch8('time traveller', 50)` every 10 epochs. The book has no validation: its
"end to end" is its training. Weights follow the book (N(0, 0.01^2), zero biases), seed 0.
It writes a JSON with its training tokens/s (time inside the epochs' loops only) and perplexity.
"""

from __future__ import annotations

import json
import math
import time

import torch
from loops import book_step, book_weights
from peer_examples import load_splits, peer_arguments


def sequential_minibatches(ids: torch.Tensor, batch: int, steps: int, generator: torch.Generator
                           ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The book's `seq_data_iter_sequential`: a random offset, then `batch` rows read in order."""
    offset = int(torch.randint(0, steps, (1,), generator=generator))
    tokens = ((len(ids) - offset - 1) // batch) * batch
    Xs = ids[offset : offset + tokens].view(batch, -1)
    Ys = ids[offset + 1 : offset + 1 + tokens].view(batch, -1)
    return [(Xs[:, i : i + steps], Ys[:, i : i + steps])
            for i in range(0, (Xs.shape[1] // steps) * steps, steps)]


def predict(prefix: torch.Tensor, num_preds: int, params: list[torch.Tensor], vocab: int
            ) -> list[int]:
    """The book's `predict_ch8`: warm up on the prefix, then `num_preds` argmax tokens."""
    W_xh, W_hh, b_h, W_hq, b_q = params
    H, out = torch.zeros(1, W_hh.shape[0]), [int(prefix[0])]
    with torch.no_grad():
        for i in range(len(prefix) - 1 + num_preds):
            x = torch.nn.functional.one_hot(torch.tensor([out[-1]]), vocab).float()
            H = torch.tanh(x @ W_xh + H @ W_hh + b_h)
            out.append(int(prefix[i + 1]) if i + 1 < len(prefix) else
                       int((H @ W_hq + b_q).argmax()))
    return out


def main() -> None:
    p = peer_arguments(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=35)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    splits, vocab = load_splits(args.path, args.max_tokens)
    g = torch.Generator().manual_seed(0)
    params = book_weights(vocab, args.hidden, "cpu", g)
    prefix = splits["train"][:14]  # the book warms up on "time traveller"
    tokens, seconds, ppl = 0, 0.0, math.nan
    for epoch in range(args.epochs):
        t0, state, loss_sum, count = time.perf_counter(), None, 0.0, 0
        for X, Y in sequential_minibatches(splits["train"], args.batch, args.steps, g):
            loss, state = book_step(params, X, Y, state, vocab)
            loss_sum, count = loss_sum + float(loss) * Y.numel(), count + Y.numel()
        seconds += time.perf_counter() - t0
        tokens += count
        ppl = math.exp(loss_sum / count)
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1} perplexity {ppl:.2f}; "
                  f"{len(predict(prefix, 50, params, vocab))} tokens predicted", flush=True)
    args.out.write_text(json.dumps({
        "model": "rnn_scratch (the book's)", "epochs": args.epochs, "train_tokens": tokens,
        "train_seconds": seconds, "tokens_per_s": tokens / seconds, "train_ppl": ppl}))


if __name__ == "__main__":
    main()
