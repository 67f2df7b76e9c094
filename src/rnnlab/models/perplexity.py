"""Perplexity (D2L 8.4): exp of the mean token cross-entropy over all tokens of a split.

    score = HeldOutScore(device)
    for X, Y in windows:                       # consecutive windows of the split's streams
        logits, state = model(X, state)
        score.add(F.cross_entropy(logits, Y.T.reshape(-1)), Y.numel())
    score.perplexity()                         # exp(summed token loss / tokens), over the split
    score.reduce(trainer.strategy)             # under DDP: the sums of every rank's rows
    token_ppl(log_probs, ids)                  # the same from (L-1, V) log-probabilities

Windows are weighted by their token counts (never a mean of per-window perplexities), and the sum
is kept in float64 so that a long split loses no digits. `LanguageModel` scores val/test with it.
"""

from __future__ import annotations

import math

import torch


class HeldOutScore:
    """Summed token cross-entropy and token count of one pass over a held-out split."""

    def __init__(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64):
        self.loss_sum = torch.zeros((), dtype=dtype, device=device)  # a tensor: no sync per add
        self.tokens = 0

    def add(self, mean_loss: torch.Tensor, num_tokens: int) -> None:
        """One window's mean token loss over `num_tokens` tokens."""
        self.loss_sum += mean_loss.detach().to(self.loss_sum.dtype) * num_tokens
        self.tokens += num_tokens

    def perplexity(self) -> torch.Tensor:
        return torch.exp(self.loss_sum / self.tokens)

    def reduce(self, strategy, replicated: bool = False, rank: int = 0) -> None:
        """Sum the loss sums and token counts of all ranks (a Lightning strategy's all-reduce; a
        no-op on one device), so every rank holds the whole split's score. `replicated`: every
        rank read all of the split, so only rank 0's sums count."""
        counted = not replicated or rank == 0
        sums = torch.stack([self.loss_sum, self.loss_sum.new_tensor(float(self.tokens))])
        sums = strategy.reduce(sums * counted, reduce_op="sum")
        self.loss_sum, self.tokens = sums[0], int(sums[1])


def token_ppl(log_probs: torch.Tensor, ids: torch.Tensor) -> float:
    """Perplexity of ids[1:] under (L-1, V) log-probabilities; inf (not an OverflowError) or
    NaN for a model that diverged."""
    nll = float(-log_probs.double().gather(1, ids[1:].long()[:, None]).mean())
    return math.exp(nll) if nll < 700 or math.isnan(nll) else math.inf
