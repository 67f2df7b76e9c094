"""One held-out stream scored as many rows at once, with the one-stream numbers (verified).

    logits, state = parallel_stream(model, X, state, chunks=16, burn_in=128)
    # X: (1, T) tokens read from `state` -> (T, V) logits and the state after X, as model(X, state)

Reading one stream is one token per step: each step is a (1 x H) @ (H x H) product that reads all
of W_hh for H^2 multiply-adds, so the stream costs T full reads of the weights. Here the stream is
cut into `chunks` pieces read side by side, C tokens per read of the weights. The first piece
starts from the true state; every other piece starts from zeros `burn_in` tokens before its first
scored token, and a recurrent network trained on text forgets where it started: by the end of the
burn-in its state is the true one to float32 rounding. That is checked, not assumed: each piece's
state after its burn-in is compared with the state its left neighbour reached at the same token
(which is true when the neighbour's start was). Every piece after the first that differs by more
than `atol`, and all the pieces after it, are read again as one stream from the neighbour's state,
so the result is the one-stream result whatever the network does (a network that does not forget
pays the parallel read on top of the sequential one).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rnnlab.models.cores import State

Forward = Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]


def _rows(state: State, index) -> State:
    # contiguous: cuDNN refuses a strided hidden state (a (layers, rows, H) slice is one)
    return tuple(s[..., index, :].contiguous() for s in state)


def _agree(a: State, b: State, atol: float) -> bool:
    return all(torch.allclose(x, y, rtol=0.0, atol=atol) for x, y in zip(a, b))


@torch.no_grad()
def parallel_stream(forward: Forward, X: torch.Tensor, state: State, chunks: int = 16,
                    burn_in: int = 128, atol: float = 1e-5) -> tuple[torch.Tensor, State]:
    """model(X, state) for one stream X (1, T), read as `chunks` rows: (T, V) logits, new state."""
    T = X.shape[1]
    if X.shape[0] != 1:
        raise ValueError(f"parallel_stream reads one stream: X has {X.shape[0]} rows")
    L = (T - burn_in) // chunks  # scored tokens per row after its burn-in
    if chunks <= 1 or burn_in < 1 or burn_in > L:  # no burn-in, or too short for it: one stream
        return forward(X, state)
    head = T - burn_in - chunks * L  # < chunks tokens first, so the rows end exactly at T
    logits = []
    if head:
        out, state = forward(X[:, :head], state)
        logits.append(out)
    starts = [head + k * L for k in range(chunks)]  # row k reads [start, start + burn_in + L)
    rows = torch.stack([X[0, s : s + burn_in + L] for s in starts])
    zeros = tuple(torch.zeros_like(s) for s in state)
    begin = tuple(torch.cat([s] + [z] * (chunks - 1), dim=-2) for s, z in zip(state, zeros))
    first, mid = forward(rows[:, :burn_in], begin)
    rest, end = forward(rows[:, burn_in:], mid)
    V = first.shape[-1]
    first, rest = first.view(burn_in, chunks, V), rest.view(L, chunks, V)
    logits += [first[:, 0], rest[:, 0]]  # row 0 scores its burn-in too: it started true
    for k in range(1, chunks):
        if not _agree(_rows(mid, slice(k, k + 1)), _rows(end, slice(k - 1, k)), atol):
            # row k did not forget its start: the rest as one stream from row k-1's end
            out, new = forward(X[:, starts[k] + burn_in :], _rows(end, slice(k - 1, k)))
            return torch.cat(logits + [out]), new
        logits.append(rest[:, k])
    return torch.cat(logits), _rows(end, slice(chunks - 1, chunks))
