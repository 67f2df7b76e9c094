"""Held-out evaluation: streams read with the state carried, token-weighted sums, perplexity.

    score = HeldOutScore(device)
    for X, Y in windows:                       # consecutive windows of the split's streams
        logits, state = model(X, state)
        score.add(F.cross_entropy(logits, Y.T.reshape(-1)), Y.numel())
    score.perplexity()                         # exp(summed token loss / tokens), over the split

    log_probs = stream_log_probs(model, ids)   # (L-1, V): the split as one stream, for mixtures

Perplexity over a split is exp of the mean token cross-entropy over all of its tokens: windows are
weighted by their token counts (never a mean of per-window perplexities), and the sum is kept in
float64 so that a long split loses no digits. `LanguageModel` scores val/test with it; the n-gram
mixture (rnnlab.mixture) mixes `stream_log_probs`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


@torch.no_grad()
def stream_log_probs(model: torch.nn.Module, ids: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """(L-1, V) log-probabilities of ids[1:], the model reading ids as one stream from a zero
    state, in chunks (the state carries across them)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    state = tuple(s.to(device) for s in model.begin_state(1))
    out = []
    for start in range(0, len(ids) - 1, chunk):
        X = ids[start : min(start + chunk, len(ids) - 1)].view(1, -1).to(device)
        logits, state = model(X, state)
        out.append(F.log_softmax(logits.float(), -1).cpu())
    model.train(was_training)
    return torch.cat(out)
