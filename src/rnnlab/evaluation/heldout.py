"""Held-out evaluation: streams read with the state carried, token-weighted sums, perplexity.

    score = HeldOutScore(device)
    for X, Y in windows:                       # consecutive windows of the split's streams
        logits, state = model(X, state)
        score.add(F.cross_entropy(logits, Y.T.reshape(-1)), Y.numel())
    score.perplexity()                         # exp(summed token loss / tokens), over the split
    score.reduce(trainer.strategy)             # under DDP: the sums of every rank's rows

    log_probs = stream_log_probs(model, ids)   # (L-1, V): the split as one stream, for mixtures
    result, log_probs = evaluate_dynamic(model, corpus, lr=[1e-3, 3e-3], decay=[0.0], window=64)

Perplexity over a split is exp of the mean token cross-entropy over all of its tokens: windows are
weighted by their token counts (never a mean of per-window perplexities), and the sum is kept in
float64 so that a long split loses no digits. `LanguageModel` scores val/test with it; the n-gram
mixture (rnnlab.mixture) mixes `stream_log_probs`.

Dynamic evaluation (Krause et al. 2018) lets a copy of the model keep learning from the held-out
text it has already scored: the stream is cut into windows, each window is scored first and then
the copy takes one gradient step on it, pulled back towards the trained weights by `decay`:
    theta <- theta - lr * step(grad) + decay * (theta_trained - theta)
so every token is still predicted from its past only. `step` is the gradient itself (SGD,
`normalize=False`), or the gradient divided by the root of a running mean of its squares over the
windows scored so far (`normalize=True`, like Krause et al.'s RMS rule, but from the evaluated
text's own past gradients rather than training data's): an Adam-trained LSTM's parameters get
gradients of very different scales, and one SGD rate cannot suit them all. The trained model is
never modified, and val and test each start from the trained weights. Its learning rate and decay
are chosen on val (a small grid); test is scored once with the chosen pair.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


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


def dynamic_log_probs(model: torch.nn.Module, ids: torch.Tensor, lr: float, decay: float = 0.0,
                      window: int = 64, normalize: bool = True, beta: float = 0.99
                      ) -> torch.Tensor:
    """(L-1, V) log-probabilities of ids[1:] under dynamic evaluation: a copy of `model` reads
    ids as one stream in windows of `window` tokens and, after scoring each window, takes a step
    on that window's mean loss (then decays towards the trained weights)."""
    adapted = copy.deepcopy(model)  # the trained model (and its checkpoint) stay as they are
    adapted.eval()  # no dropout: the scores are the model's predictions
    params = [p for p in adapted.parameters() if p.requires_grad]
    trained = [p.detach().clone() for p in params]
    mean_sq = [torch.zeros_like(p) for p in params]  # of the gradients so far (normalize)
    device = params[0].device
    state = tuple(s.to(device) for s in adapted.begin_state(1))
    out = []
    for n, start in enumerate(range(0, len(ids) - 1, window), 1):
        end = min(start + window, len(ids) - 1)
        X = ids[start:end].view(1, -1).to(device)
        Y = ids[start + 1 : end + 1].to(device).long()
        with torch.enable_grad():
            logits, state = adapted(X, tuple(s.detach() for s in state))
            logp = F.log_softmax(logits.float(), -1)
            out.append(logp.detach().cpu())  # scored before the model learns from it
            grads = torch.autograd.grad(F.nll_loss(logp, Y), params)
        with torch.no_grad():
            if normalize:
                torch._foreach_mul_(mean_sq, beta)
                torch._foreach_addcmul_(mean_sq, grads, grads, value=1 - beta)
                rms = torch._foreach_sqrt(torch._foreach_div(mean_sq, 1 - beta**n))  # unbiased
                torch._foreach_add_(rms, 1e-8)
                torch._foreach_addcdiv_(params, grads, rms, value=-lr)
            else:
                torch._foreach_add_(params, grads, alpha=-lr)
            if decay:
                torch._foreach_lerp_(params, trained, decay)
    return torch.cat(out)


def token_ppl(log_probs: torch.Tensor, ids: torch.Tensor) -> float:
    """Perplexity of ids[1:] under (L-1, V) log-probabilities."""
    nll = -log_probs.double().gather(1, ids[1:].long()[:, None]).mean()
    return math.exp(float(nll))


def evaluate_dynamic(model: torch.nn.Module, corpus: dict[str, torch.Tensor],
                     lr: float | Sequence[float] = 1e-3, decay: float | Sequence[float] = 0.0,
                     window: int = 64, normalize: bool = True
                     ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Choose (lr, decay) from the grid on corpus["val"], then score corpus["test"] once.
    Returns the numbers (val/ppl_dyn, test/ppl_dyn, dyn_lr, dyn_decay) and the chosen
    setting's log-probabilities per split (for the n-gram mixture)."""
    lrs = [lr] if isinstance(lr, (int, float)) else list(lr)
    decays = [decay] if isinstance(decay, (int, float)) else list(decay)
    val = corpus["val"]
    tried = {}
    for a, d in itertools.product(lrs, decays):
        lp = dynamic_log_probs(model, val, a, d, window, normalize)
        tried[(a, d)] = (token_ppl(lp, val), lp)
        log.info("dynamic evaluation lr=%g decay=%g window=%d: val/ppl_dyn %.4f", a, d, window,
                 tried[(a, d)][0])
    (a, d), (val_ppl, val_lp) = min(tried.items(), key=lambda kv: kv[1][0])
    result = {"val/ppl_dyn": val_ppl, "dyn_lr": a, "dyn_decay": d, "dyn_window": window}
    log_probs = {"val": val_lp}
    if len(corpus.get("test", ())) > 1:
        log_probs["test"] = dynamic_log_probs(model, corpus["test"], a, d, window, normalize)
        result["test/ppl_dyn"] = token_ppl(log_probs["test"], corpus["test"])
    return result, log_probs
