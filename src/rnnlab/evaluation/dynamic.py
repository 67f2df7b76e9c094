"""Dynamic evaluation (Krause et al. 2018) lets a copy of the model keep learning from the held-out
text it has already scored: the stream is cut into windows, each window is scored first and then
the copy takes one gradient step on it, pulled back towards the trained weights by `decay`:
    theta <- theta - lr * step(grad) + decay * (theta_trained - theta)
so every token is still predicted from its past only. `step` is the gradient itself (SGD,
`normalize=False`), or the gradient divided by the root of a running mean of its squares over the
windows scored so far (`normalize=True`, like Krause et al.'s RMS rule, but from the evaluated
text's own past gradients rather than training data's): an Adam-trained LSTM's parameters get
gradients of very different scales, and one SGD rate cannot suit them all. The trained model is
never modified, and val and test each start from the trained weights. Its learning rate and decay
are chosen on val (a small grid; a setting whose val/ppl is not finite never wins); test is scored
once with the chosen pair. Where Krause et al. differ: they decay each parameter at a rate scaled
by its RMS and take that RMS from the training data's gradients; here one decay holds for all
parameters and the RMS comes from the evaluated text (docs/configuration.md).

    result, log_probs = evaluate_dynamic(model, corpus, lr=[1e-3, 3e-3], decay=[0.0], window=64)
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from rnnlab.models.perplexity import token_ppl

log = logging.getLogger(__name__)


def adaptable_copy(model: torch.nn.Module) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """A copy of `model` in eval mode (no dropout: the scores are the model's predictions) and its
    trainable parameters; the trained model (and its checkpoint) stay as they are."""
    adapted = copy.deepcopy(model)
    adapted.eval()
    return adapted, [p for p in adapted.parameters() if p.requires_grad]


def window_gradients(adapted: torch.nn.Module, params: list[torch.Tensor], ids: torch.Tensor,
                     window: int, out: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, ...]]:
    """Read ids as one stream in windows of `window` tokens: append each window's (T, V)
    log-probabilities to `out`, then yield the gradient of its mean loss w.r.t. `params`, which
    the caller may step before the next window is read (the state carries over, detached)."""
    device = params[0].device
    state = tuple(s.to(device) for s in adapted.begin_state(1))
    for start in range(0, len(ids) - 1, window):
        end = min(start + window, len(ids) - 1)
        X = ids[start:end].view(1, -1).to(device)
        Y = ids[start + 1 : end + 1].to(device).long()
        with torch.enable_grad():
            logits, state = adapted(X, tuple(s.detach() for s in state))
            logp = F.log_softmax(logits.float(), -1)
            out.append(logp.detach().cpu())  # scored before the model learns from it
            yield torch.autograd.grad(F.nll_loss(logp, Y), params)


def dynamic_log_probs(model: torch.nn.Module, ids: torch.Tensor, lr: float, decay: float = 0.0,
                      window: int = 64, normalize: bool = True, beta: float = 0.99
                      ) -> torch.Tensor:
    """(L-1, V) log-probabilities of ids[1:] under dynamic evaluation: a copy of `model` reads
    ids as one stream in windows of `window` tokens and, after scoring each window, takes a step
    on that window's mean loss (then decays towards the trained weights)."""
    adapted, params = adaptable_copy(model)
    trained = [p.detach().clone() for p in params]
    mean_sq = [torch.zeros_like(p) for p in params]  # of the gradients so far (normalize)
    out: list[torch.Tensor] = []
    for n, grads in enumerate(window_gradients(adapted, params, ids, window, out), 1):
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


def evaluate_dynamic(model: torch.nn.Module, corpus: dict[str, torch.Tensor],
                     lr: float | Sequence[float] = 1e-3, decay: float | Sequence[float] = 0.0,
                     window: int = 64, normalize: bool = True
                     ) -> tuple[dict, dict[str, torch.Tensor] | None]:
    """Choose (lr, decay) from the grid on corpus["val"], then score corpus["test"] once.
    Returns the numbers (val/ppl_dyn, test/ppl_dyn, dyn_lr, dyn_decay) and the chosen
    setting's log-probabilities per split (for the n-gram mixture); None instead of them, and
    val/ppl_dyn NaN (null in summary.json), when no setting gives a finite val/ppl."""
    lrs = [lr] if isinstance(lr, (int, float)) else list(lr)
    decays = [decay] if isinstance(decay, (int, float)) else list(decay)
    val = corpus["val"]
    tried = {}
    for a, d in itertools.product(lrs, decays):
        lp = dynamic_log_probs(model, val, a, d, window, normalize)
        tried[(a, d)] = (token_ppl(lp, val), lp)
        log.info("dynamic evaluation lr=%g decay=%g window=%d: val/ppl_dyn %.4f", a, d, window,
                 tried[(a, d)][0])
    finite = {k: v for k, v in tried.items() if math.isfinite(v[0])}
    if not finite:  # every setting diverged: no number, and nothing for the mixture
        log.warning("dynamic evaluation: no setting of lr=%s decay=%s gives a finite val/ppl; "
                    "try smaller learning rates", lrs, decays)
        return {"val/ppl_dyn": math.nan, "dyn_lr": None, "dyn_decay": None,
                "dyn_window": window}, None
    (a, d), (val_ppl, val_lp) = min(finite.items(), key=lambda kv: kv[1][0])
    result = {"val/ppl_dyn": val_ppl, "dyn_lr": a, "dyn_decay": d, "dyn_window": window}
    log_probs = {"val": val_lp}
    if len(corpus.get("test", ())) > 1:
        log_probs["test"] = dynamic_log_probs(model, corpus["test"], a, d, window, normalize)
        result["test/ppl_dyn"] = token_ppl(log_probs["test"], corpus["test"])
    return result, log_probs
