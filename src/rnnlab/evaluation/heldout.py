"""A held-out split read as one stream with the state carried, for the scores that combine
or adapt the model's predictions token by token (the n-gram mixture, dynamic evaluation).

    log_probs = stream_log_probs(model, ids)   # (L-1, V): log P(ids[t+1] | ids[:t+1])
    token_ppl(log_probs, ids)                  # rnnlab.models.perplexity
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rnnlab.kernels.choice import stream_threads
from rnnlab.models.streams import parallel_stream


@torch.no_grad()
def stream_log_probs(model: torch.nn.Module, ids: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """(L-1, V) log-probabilities of ids[1:], the model reading ids as one stream from a zero
    state, in windows of `chunk` tokens (the state carries across them), each read as the
    model's `eval_chunks` rows at once (models.streams: the one-stream numbers)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    state = tuple(s.to(device) for s in model.begin_state(1))
    out = []
    with stream_threads(1, device):
        for start in range(0, len(ids) - 1, chunk):
            X = ids[start : min(start + chunk, len(ids) - 1)].view(1, -1).to(device)
            logits, state = parallel_stream(model, X, state, getattr(model, "eval_chunks", 1),
                                            getattr(model, "eval_burn_in", 0))
            out.append(F.log_softmax(logits.float(), -1).cpu())
    model.train(was_training)
    return torch.cat(out)
