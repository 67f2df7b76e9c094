"""Dynamic evaluation with the rule of Krause et al. (2018), an option beside evaluation/dynamic.py:
the step of each parameter is scaled by the root mean square of its gradients on *training*
batches, and the decay towards the trained weights is scaled per parameter by that RMS too:

    theta <- theta - lr * grad / (MS + eps) + decay * r * (theta_trained - theta)
    MS = sqrt(mean of grad^2 over training batches),  r = min(MS / sum_params mean(MS), 1/decay)

(their `gradstat` and `evaluate`: parameters the training data still pushes hard adapt fast and
are pulled back hard). Each window is scored before the copy learns from it, so every token is
predicted from its past only; the trained model is never modified; val and test each start from
the trained weights. eps is relative: `eps` times the mean over parameter tensors of mean(MS).

    stats = training_gradient_rms(model, dm.corpus["train"], window=64)
    log_probs = krause_log_probs(model, ids, stats, lr=1e-4, decay=0.01)
    result, log_probs = evaluate_krause(model, corpus, lr=[...], decay=[...], window=64)
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rnnlab.evaluation.dynamic import adaptable_copy, window_gradients
from rnnlab.models.perplexity import token_ppl

log = logging.getLogger(__name__)


def training_gradient_rms(model: torch.nn.Module, train: torch.Tensor, window: int = 64,
                          rows: int = 32, batches: int = 16) -> list[torch.Tensor]:
    """MS per parameter: the RMS of the gradients of the mean loss over `batches` batches of
    `rows` training windows (evenly spaced over the split, each row from a zero state)."""
    scratch = copy.deepcopy(model)
    scratch.eval()
    params = [p for p in scratch.parameters() if p.requires_grad]
    device = params[0].device
    sq = [torch.zeros_like(p) for p in params]
    starts = torch.linspace(0, len(train) - window - 2, rows * batches).long()
    for b in range(batches):
        s = starts[b::batches]  # rows spread over the whole split
        X = torch.stack([train[i : i + window] for i in s]).to(device)
        Y = torch.stack([train[i + 1 : i + window + 1] for i in s]).to(device).long()
        state = tuple(t.to(device) for t in scratch.begin_state(len(s)))
        with torch.enable_grad():
            logits, _ = scratch(X, state)
            # the LanguageModel's logits are (steps * rows, V), time-major
            loss = F.cross_entropy(logits.float(), Y.T.reshape(-1))
            grads = torch.autograd.grad(loss, params)
        torch._foreach_addcmul_(sq, grads, grads)
    return [torch.sqrt(s / batches) for s in sq]


def krause_log_probs(model: torch.nn.Module, ids: torch.Tensor, ms: list[torch.Tensor],
                     lr: float, decay: float = 0.0, window: int = 64, eps: float = 1e-3
                     ) -> torch.Tensor:
    """(L-1, V) log-probabilities of ids[1:] under Krause et al.'s rule, with `ms` from
    training_gradient_rms."""
    adapted, params = adaptable_copy(model)
    trained = [p.detach().clone() for p in params]
    total = sum(m.mean() for m in ms)
    floor = eps * total / len(ms)
    denom = [m + floor for m in ms]
    rate = [(decay * m / total).clamp(max=1.0) for m in ms] if decay else None
    out: list[torch.Tensor] = []
    for grads in window_gradients(adapted, params, ids, window, out):
        with torch.no_grad():
            torch._foreach_addcdiv_(params, grads, denom, value=-lr)
            if rate is not None:
                diff = torch._foreach_sub(trained, params)
                torch._foreach_addcmul_(params, diff, rate)
    return torch.cat(out)


def evaluate_krause(model: torch.nn.Module, corpus: dict[str, torch.Tensor],
                    lr: float | Sequence[float] = 1e-4, decay: float | Sequence[float] = 0.0,
                    window: int = 64) -> tuple[dict, dict[str, torch.Tensor]]:
    """Gradient statistics from corpus["train"], (lr, decay) chosen on corpus["val"], then
    corpus["test"] scored once. Returns (val/ppl_krause, test/ppl_krause, krause_lr,
    krause_decay) and the chosen setting's log-probabilities per split."""
    lrs = [lr] if isinstance(lr, (int, float)) else list(lr)
    decays = [decay] if isinstance(decay, (int, float)) else list(decay)
    ms = training_gradient_rms(model, corpus["train"], window)
    val = corpus["val"]
    tried = {}
    for a, d in itertools.product(lrs, decays):
        lp = krause_log_probs(model, val, ms, a, d, window)
        tried[(a, d)] = (token_ppl(lp, val), lp)
        log.info("Krause dynamic evaluation lr=%g decay=%g: val/ppl_krause %.4f", a, d,
                 tried[(a, d)][0])
    (a, d), (val_ppl, val_lp) = min(tried.items(), key=lambda kv: kv[1][0])
    result = {"val/ppl_krause": val_ppl, "krause_lr": a, "krause_decay": d}
    log_probs = {"val": val_lp}
    if len(corpus.get("test", ())) > 1:
        log_probs["test"] = krause_log_probs(model, corpus["test"], ms, a, d, window)
        result["test/ppl_krause"] = token_ppl(log_probs["test"], corpus["test"])
    return result, log_probs
